"""Portrait → avatar record: everything the render path needs from one uploaded photo, computed once.

Steps: decode (JPEG/PNG/WebP, EXIF orientation, any mode → RGB, size limits read from the header first),
find the largest face and its 68 landmarks with dlib, SadTalker's crop (OpenTalker/SadTalker
``src/utils/croper.py`` ``Preprocesser.align_face``/``crop`` and ``src/utils/preprocess.py``
``CropAndExtract.generate``; Apache-2.0), and the 5-point similarity alignment to 224² that face_recon expects
(``src/face3d/util/preprocess.py`` ``align_img``, from Deep3DFaceRecon_pytorch).

Deviations from upstream, all deliberate:
- Upstream detects with RetinaFace and a 98-point model mapped to 68 points; we use dlib's frontal detector and
  68-point predictor (``face-recognition-models``) and apply the same geometric rule to its points.
- Upstream shrinks very large photos (quad ≥ 2048 px) before cropping and then reports the crop box in the
  shrunk coordinates; we always work in original coordinates, so the box is right for paste-back.
- Upstream clamps the quad's bottom edge by the image *width*; we clamp each edge by the image bounds.
- Upstream resizes the crop bilinearly in both directions; we shrink with area averaging (no aliasing) and
  enlarge with bicubic interpolation, which paste-back's bicubic resize undoes to within a level or two.
- Upstream detects landmarks a second time on the resized crop for the 224² alignment; we map the landmarks we
  already have into crop coordinates (same points, one detection).

Torch-free: numpy, OpenCV, Pillow and dlib only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import cv2
import dlib
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import FaceTooSmall, ImageTooLarge, NoFaceFound, UnsupportedImage

log = logging.getLogger(__name__)

CropMode = Literal["crop", "resize", "full"]
CROP_MODES: tuple[str, ...] = get_args(CropMode)
CROP_SIZES = (256, 512)
# MPO is how Pillow reports the multi-picture JPEGs many phone cameras write; its first picture is a JPEG.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP")

# Bumped whenever the output for the same bytes and options changes, so cached avatars are not reused.
ALGORITHM_VERSION = 1

# Detection runs on a copy no larger than this (dlib's cost grows with pixels; a portrait's face is large).
DETECT_MAX_SIDE = 1024
# One pyramid upsampling lets dlib find faces down to ~40 px; the size limit below then speaks to the user.
DETECT_UPSAMPLE = 1
# dlib's default threshold (0) accepts weak hits: on skimage's astronaut it finds her face (score 1.2) and a
# "face" on the suit (0.1). Real faces score well above 0.3.
DETECT_THRESHOLD = 0.3

# face_recon input (Deep3DFaceRecon): 224² crop, standard face scaled to 102 px per unit.
RECON_SIZE = 224
RECON_RESCALE = 102.0

_DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class AvatarLimits:
    """Input limits; the gateway's settings fill these."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    min_face_px: int = 64


DEFAULT_LIMITS = AvatarLimits()


class Box(NamedTuple):
    """An axis-aligned pixel box [x0, x1) × [y0, y1) in original-image coordinates."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes, limits: AvatarLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Bytes → (H, W, 3) uint8 RGB, upright per EXIF; raises UnsupportedImage or ImageTooLarge."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge.for_bytes(len(data), limits.max_bytes)
    if not data:
        raise UnsupportedImage("The file is empty. Send a JPEG, PNG or WebP image.")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"The image is too large: more than {limits.max_pixels:,} pixels.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnsupportedImage("The file is not an image we can read. Send a JPEG, PNG or WebP image.") from err
    if img.format not in FORMATS:
        raise UnsupportedImage(f"{img.format} images are not supported. Send a JPEG, PNG or WebP image.")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge.for_pixels(width, height, limits.max_pixels)
    if width < 1 or height < 1:
        raise UnsupportedImage("The image has no pixels.")
    try:
        img.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad data
        raise UnsupportedImage(f"The {img.format} file is corrupt or truncated and cannot be decoded.") from err
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block is not worth refusing the photo for
        log.warning("ignoring unreadable EXIF orientation", exc_info=True)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → RGB uint8; transparent pixels are composited over white (a neutral backdrop)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16-bit greyscale: Pillow's own conversion clips instead of scaling.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(backdrop, rgba)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)  # a writable, C-contiguous copy


# ---------------------------------------------------------------------------------------------------------------
# Face detection (dlib)


class _Dlib(NamedTuple):
    detector: dlib.fhog_object_detector
    predictor: dlib.shape_predictor
    lock: threading.Lock  # dlib documents no thread safety for its detector objects


_dlib: _Dlib | None = None
_dlib_lock = threading.Lock()


def shape_predictor_path() -> Path:
    """The 68-point model inside ``face-recognition-models`` (found without importing it: it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"


def _models() -> _Dlib:
    global _dlib
    if _dlib is None:
        with _dlib_lock:
            if _dlib is None:
                t0 = time.perf_counter()
                detector = dlib.get_frontal_face_detector()
                predictor = dlib.shape_predictor(str(shape_predictor_path()))
                _dlib = _Dlib(detector, predictor, threading.Lock())
                log.info("loaded dlib face models in %.2f s", time.perf_counter() - t0)
    return _dlib


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """The largest face: detector box and 68 landmarks in original coordinates, and how many faces were seen."""

    rect: Box
    landmarks: np.ndarray  # (68, 2) float64, (x, y)
    faces_seen: int

    @property
    def size_px(self) -> int:
        return round((self.rect.width + self.rect.height) / 2)


def detect_face(image: np.ndarray) -> FaceDetection:
    """Find faces in an RGB image and return the largest; raises NoFaceFound."""
    height, width = image.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    work = image
    if scale < 1.0:
        work = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    models = _models()
    with models.lock:
        rects, scores, _ = models.detector.run(np.ascontiguousarray(work), DETECT_UPSAMPLE, DETECT_THRESHOLD)
    if len(rects) == 0:
        raise NoFaceFound()
    best = max(range(len(rects)), key=lambda i: (rects[i].width() * rects[i].height(), scores[i]))
    r = rects[best]
    rect = Box(*(round(v / scale) for v in (r.left(), r.top(), r.right() + 1, r.bottom() + 1)))
    # Landmarks on the full-resolution image: the predictor's cost does not grow with the image.
    with models.lock:
        shape = models.predictor(
            np.ascontiguousarray(image), dlib.rectangle(rect.x0, rect.y0, rect.x1 - 1, rect.y1 - 1)
        )
    landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return FaceDetection(rect=rect, landmarks=landmarks, faces_seen=len(rects))


# ---------------------------------------------------------------------------------------------------------------
# SadTalker's crop


def sadtalker_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The oriented square around eyes and mouth (FFHQ-style): corners (4, 2) and side length.

    The half-side is the larger of twice the eye distance and 1.8× the eye-to-mouth distance; the square is
    rotated with the eye-line/mouth direction and centred a tenth of the way from the eyes to the mouth.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_mid  # outer mouth corners
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x = x / math.hypot(*x) * max(2.0 * math.hypot(*eye_to_eye), 1.8 * math.hypot(*eye_to_mouth))
    y = np.array([-x[1], x[0]])
    centre = eye_mid + 0.1 * eye_to_mouth
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
    return quad, 2.0 * math.hypot(*x)


def sadtalker_crop_box(landmarks: np.ndarray, width: int, height: int) -> Box:
    """SadTalker's ``crop`` box: the quad's left/top/right/bottom corners, rounded half up, clipped to the image.

    Upstream takes min x of the two left corners, min y of the two top corners, and so on, adds 0.5 and
    truncates; its intermediate border crop only shifts the origin, so the box reduces to this.
    """
    quad, _ = sadtalker_quad(landmarks)
    left = min(quad[0, 0], quad[1, 0])
    top = min(quad[0, 1], quad[3, 1])
    right = max(quad[2, 0], quad[3, 0])
    bottom = max(quad[1, 1], quad[2, 1])
    return Box(
        max(math.floor(left + 0.5), 0),
        max(math.floor(top + 0.5), 0),
        min(math.floor(right + 0.5), width),
        min(math.floor(bottom + 0.5), height),
    )


def crop_box(landmarks: np.ndarray, width: int, height: int, mode: CropMode) -> Box:
    """``crop`` and ``full`` share SadTalker's face box; ``resize`` uses the whole picture."""
    if mode == "resize":
        return Box(0, 0, width, height)
    return sadtalker_crop_box(landmarks, width, height)


def cut_and_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box region resized to size² (area averaging when shrinking, bicubic when enlarging)."""
    region = image[box.y0 : box.y1, box.x0 : box.x1]
    shrinking = box.width * box.height > size * size
    out = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return np.ascontiguousarray(out, dtype=np.uint8)


def to_crop_coordinates(points: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Map original pixel coordinates into the size² crop (pixel centres at integer coordinates)."""
    scale = np.array([size / box.width, size / box.height])
    return (np.asarray(points, dtype=np.float64) - np.array([box.x0, box.y0]) + 0.5) * scale - 0.5


# ---------------------------------------------------------------------------------------------------------------
# 5-point alignment for face_recon


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """68 → 5 points in the order face_recon uses: left eye, right eye, nose tip, left and right mouth corners."""
    lm = np.asarray(landmarks)
    return np.stack([lm[[36, 39]].mean(axis=0), lm[[42, 45]].mean(axis=0), lm[30], lm[48], lm[54]])


def _load_standard_5p() -> np.ndarray:
    raw = json.loads((_DATA_DIR / "similarity_Lm3D_all.json").read_text())
    return five_points(np.asarray(raw["lm"], dtype=np.float64))


STANDARD_5P = _load_standard_5p()  # (5, 3), the BFM mean face's landmarks


def _fit_scale_translation(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine camera 3-D → 2-D (upstream ``POS``): its mean row norm (scale) and translation.

    The 8-unknown system of upstream is block diagonal, so each image axis is an independent 4-unknown fit.
    """
    design = np.hstack([points_3d, np.ones((len(points_3d), 1))])
    rows, *_ = np.linalg.lstsq(design, points_2d, rcond=None)  # (4, 2): one column per image axis
    scale = float(np.linalg.norm(rows[:3, 0]) + np.linalg.norm(rows[:3, 1])) / 2
    return rows[3].copy(), scale


def align_for_recon(crop: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and shift the crop so its 5 points match the standard face: the 224² face_recon input.

    Returns (aligned (224, 224, 3) uint8, params [w0, h0, s, tx, ty]) with upstream's conventions: the fit is
    done with y pointing up, ``s`` scales the crop, ``(tx, ty)`` is the fitted centre; full mode's mapping reads
    ``params[2:]``.
    """
    h0, w0 = crop.shape[:2]
    pts = five_points(landmarks).astype(np.float64)
    pts[:, 1] = h0 - 1 - pts[:, 1]
    t, fitted = _fit_scale_translation(pts, STANDARD_5P)
    s = RECON_RESCALE / fitted
    w, h = int(w0 * s), int(h0 * s)
    half = RECON_SIZE / 2
    left = int(w / 2 - half + (t[0] - w0 / 2) * s)
    up = int(h / 2 - half + (h0 / 2 - t[1]) * s)
    # Pillow's bicubic (with its antialiasing) as upstream; pixels outside the crop come out black, as upstream.
    resized = Image.fromarray(crop).resize((w, h), resample=Image.Resampling.BICUBIC)
    aligned = np.array(resized.crop((left, up, left + RECON_SIZE, up + RECON_SIZE)), dtype=np.uint8)
    return aligned, np.array([w0, h0, s, t[0], t[1]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# The avatar record


@dataclass(frozen=True, eq=False)
class Avatar:
    """Everything the render path needs from one portrait. Arrays are read-only: avatars are shared."""

    key: str  # content hash of the input bytes and options
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    crop: np.ndarray  # (size, size, 3) uint8: the generator's source image
    box: Box  # where the crop came from, in image coordinates (the paste-back box)
    aligned: np.ndarray  # (224, 224, 3) uint8: the face_recon input
    align_params: np.ndarray  # (5,) float64 [w0, h0, s, tx, ty]
    landmarks: np.ndarray  # (68, 2) float64, image coordinates
    faces_seen: int
    mode: CropMode
    size: int

    def __post_init__(self) -> None:
        for array in (self.image, self.crop, self.aligned, self.align_params, self.landmarks):
            array.setflags(write=False)


def _check_options(mode: str, size: int) -> None:
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if size not in CROP_SIZES:
        raise ValueError(f"crop size must be one of {CROP_SIZES}, got {size!r}")


def avatar_key(data: bytes, *, mode: CropMode = "crop", size: int = 256) -> str:
    """Content hash (sha256 hex) of the input bytes and the options that change the result."""
    digest = hashlib.sha256(f"avatar/{ALGORITHM_VERSION}/{mode}/{size}\n".encode())
    digest.update(data)
    return digest.hexdigest()


def prepare_avatar(
    data: bytes, *, mode: CropMode = "crop", size: int = 256, limits: AvatarLimits = DEFAULT_LIMITS
) -> Avatar:
    """Uploaded portrait bytes → avatar record; raises the errors of :mod:`gateway.errors` on bad input."""
    _check_options(mode, size)
    t0 = time.perf_counter()
    image = decode_image(data, limits)
    height, width = image.shape[:2]
    face = detect_face(image)
    if face.size_px < limits.min_face_px:
        raise FaceTooSmall(face.size_px, limits.min_face_px)
    box = crop_box(face.landmarks, width, height, mode)
    if box.width < 2 or box.height < 2:  # landmarks far outside the picture: not a usable face
        raise NoFaceFound()
    crop = cut_and_resize(image, box, size)
    aligned, align_params = align_for_recon(crop, to_crop_coordinates(face.landmarks, box, size))
    log.info(
        "avatar %dx%d: %d face(s), face %d px, box %s, %.0f ms",
        width,
        height,
        face.faces_seen,
        face.size_px,
        tuple(box),
        1e3 * (time.perf_counter() - t0),
    )
    return Avatar(
        key=avatar_key(data, mode=mode, size=size),
        image=image,
        crop=crop,
        box=box,
        aligned=aligned,
        align_params=align_params,
        landmarks=face.landmarks,
        faces_seen=face.faces_seen,
        mode=mode,
        size=size,
    )
