"""Portrait bytes → the picture and its face, once per upload; what every engine starts from.

Steps: decode (JPEG/PNG/WebP, EXIF orientation, any mode → RGB, size limits read from the header first), find
the largest face and its 68 landmarks with dlib, and the face square: the FFHQ-style square around eyes and
mouth (OpenTalker/SadTalker ``src/utils/croper.py`` ``Preprocesser.align_face``/``crop``; Apache-2.0), which
the ``face`` framing centres on and SadTalker crops. Engines make their own parts from this
(``Engine.portrait_part``), only the engines the server serves.

Deviations from upstream, all deliberate:
- Upstream detects with RetinaFace and a 98-point model mapped to 68 points; we use dlib's frontal (HOG)
  detector, its CNN (MMOD) detector where HOG finds nothing, and the 68-point predictor (all three from
  ``face-recognition-models``), and apply the same geometric rule to its points.
- Upstream shrinks very large photos (quad ≥ 2048 px) before cropping and then reports the crop box in the
  shrunk coordinates; we always work in original coordinates, so the box is right for paste-back.
- Upstream clamps the quad's bottom edge by the image *width*; we clamp each edge by the image bounds.

Torch-free: numpy, OpenCV, Pillow and dlib only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import dlib
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import FaceTooSmall, ImageTooLarge, NoFaceFound, UnsupportedImage

log = logging.getLogger(__name__)

# MPO is how Pillow reports the multi-picture JPEGs many phone cameras write; its first picture is a JPEG.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP")

# Bumped whenever the output for the same bytes and options changes, so cached avatars are not reused.
ALGORITHM_VERSION = 2

# Detection runs on a copy no larger than this (dlib's cost grows with pixels; a portrait's face is large).
DETECT_MAX_SIDE = 1024
# One pyramid upsampling lets dlib find faces down to ~40 px; the size limit below then speaks to the user.
DETECT_UPSAMPLE = 1
# dlib's default threshold (0) accepts weak hits: on skimage's astronaut it finds her face (score 1.2) and a
# "face" on the suit (0.1). Real faces score well above 0.3.
DETECT_THRESHOLD = 0.3

# Where HOG finds nothing (a greyscale or soft-lit portrait: skimage's camera; a tilted head), dlib's CNN detector
# looks again. It costs seconds and hundreds of MB, so only then, at no upsampling, on a copy no larger than this:
# measured on this CPU, 1.6 s and 0.3 GB at 512², 2.5-5 s and 0.45 GB at 640². It finds faces from ~80 px of
# the copy (a sixth of its long side), which a portrait's face is.
CNN_MAX_SIDE = 512
# Measured at 512²: faces score 0.89-1.15 (skimage's camera 1.12, astronaut 1.06, blurred 0.92, half hidden 0.89,
# turned 60° 1.09); coffee, cat, rocket, bricks, text, noise and a flat grey give no detection above dlib's own 0.
CNN_THRESHOLD = 0.5
# Pictures smaller than this on a side hold no face the CNN can find (and tiny ones make dlib raise).
CNN_MIN_SIDE = 64

Detector = Literal["hog", "cnn"]


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


class _Cnn(NamedTuple):
    detector: dlib.cnn_face_detection_model_v1
    lock: threading.Lock  # its own: a CNN run (seconds) does not hold up HOG on other photos


_dlib: _Dlib | None = None
_cnn: _Cnn | None = None
_dlib_lock = threading.Lock()


def shape_predictor_path() -> Path:
    """The 68-point model inside ``face-recognition-models`` (found without importing it: it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"


def cnn_detector_path() -> Path:
    """dlib's CNN face detector weights, shipped beside the 68-point model."""
    return shape_predictor_path().with_name("mmod_human_face_detector.dat")


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


def _cnn_model() -> _Cnn:
    """Loaded on first use: most servers never meet a face HOG misses."""
    global _cnn
    if _cnn is None:
        with _dlib_lock:
            if _cnn is None:
                t0 = time.perf_counter()
                _cnn = _Cnn(dlib.cnn_face_detection_model_v1(str(cnn_detector_path())), threading.Lock())
                log.info("loaded dlib's CNN face detector in %.2f s", time.perf_counter() - t0)
    return _cnn


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """The largest face: detector box and 68 landmarks in original coordinates, how many faces the detector that
    found it saw, and which detector that was."""

    rect: Box
    landmarks: np.ndarray  # (68, 2) float64, (x, y)
    faces_seen: int
    detector: Detector

    @property
    def size_px(self) -> int:
        return round((self.rect.width + self.rect.height) / 2)


def _fitting(image: np.ndarray, max_side: int) -> float:
    """The scale (≤ 1) that brings ``image``'s long side within ``max_side``."""
    return min(1.0, max_side / max(image.shape[:2]))


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    """A C-contiguous copy scaled by ``scale`` (≤ 1; the image itself, contiguous, at 1)."""
    if scale < 1.0:
        height, width = image.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _hog_faces(image: np.ndarray, scale: float, upsample: int) -> list[tuple[dlib.rectangle, float, float]]:
    """HOG's faces on a copy scaled by ``scale``: (rectangle in the copy, score, scale)."""
    models = _models()
    work = _scaled(image, scale)
    with models.lock:
        rects, scores, _ = models.detector.run(work, upsample, DETECT_THRESHOLD)
    return [(r, score, scale) for r, score in zip(rects, scores, strict=True)]


def _cnn_faces(image: np.ndarray) -> list[tuple[dlib.rectangle, float, float]]:
    scale = _fitting(image, CNN_MAX_SIDE)
    work = _scaled(image, scale)
    # Its filters need some pixels (dlib raises on an 8-pixel picture), and it finds no face under ≈ 80 px.
    if min(work.shape[:2]) < CNN_MIN_SIDE:
        return []
    cnn = _cnn_model()
    t0 = time.perf_counter()
    with cnn.lock:
        found = cnn.detector(work, 0)
    faces = [(d.rect, d.confidence, scale) for d in found if d.confidence >= CNN_THRESHOLD]
    log.info("HOG found no face; the CNN detector found %d in %.2f s", len(faces), time.perf_counter() - t0)
    return faces


def detect_face(image: np.ndarray) -> FaceDetection:
    """Find faces in an RGB image and return the largest; raises NoFaceFound.

    dlib's HOG detector first; only where it finds nothing, its CNN detector (slower, but it finds faces HOG
    misses). ``faces_seen`` counts the faces of the detector that found the face."""
    detector: Detector = "hog"
    faces = _hog_faces(image, _fitting(image, DETECT_MAX_SIDE), DETECT_UPSAMPLE)
    if not faces:
        detector, faces = "cnn", _cnn_faces(image)
    if not faces:
        raise NoFaceFound()
    r, _, scale = max(faces, key=lambda face: (face[0].width() * face[0].height(), face[1]))
    rect = _box(r, scale)
    # Landmarks on the full-resolution image: the predictor's cost does not grow with the image.
    return FaceDetection(rect=rect, landmarks=landmarks_of(image, rect), faces_seen=len(faces), detector=detector)


def _box(rect: dlib.rectangle, scale: float) -> Box:
    """A dlib rectangle found on a copy scaled by ``scale``, in the original's pixels."""
    return Box(*(round(v / scale) for v in (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)))


def face_rects(image: np.ndarray, *, scale: float | None = None, upsample: int = DETECT_UPSAMPLE) -> list[Box]:
    """HOG's faces in ``image``, in its pixels: searched as :func:`detect_face` searches (a copy no larger than
    ``DETECT_MAX_SIDE``), or on a copy scaled by ``scale`` — the cheap search near a known face (a video's next
    frame)."""
    scale = _fitting(image, DETECT_MAX_SIDE) if scale is None else min(scale, 1.0)
    return [_box(r, scale) for r, _, _ in _hog_faces(image, scale, upsample)]


def cnn_face_rects(image: np.ndarray) -> list[Box]:
    """The CNN detector's faces in ``image`` (searched on a copy no larger than ``CNN_MAX_SIDE``), in its pixels."""
    return [_box(r, scale) for r, _, scale in _cnn_faces(image)]


def landmarks_of(image: np.ndarray, rect: Box) -> np.ndarray:
    """(68, 2) float64 landmarks of the face in ``rect`` (image pixels)."""
    models = _models()
    with models.lock:
        shape = models.predictor(
            np.ascontiguousarray(image), dlib.rectangle(rect.x0, rect.y0, rect.x1 - 1, rect.y1 - 1)
        )
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# The face square (FFHQ-style alignment from the landmarks)


def face_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
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


def face_square(landmarks: np.ndarray, width: int, height: int) -> Box:
    """The face square: the quad's left/top/right/bottom corners, rounded half up, clipped to the image.

    This is SadTalker's ``crop`` box (upstream takes min x of the two left corners, min y of the two top
    corners, and so on, adds 0.5 and truncates; its intermediate border crop only shifts the origin, so the box
    reduces to this), and the ``face`` framing is centred on it.
    """
    quad, _ = face_quad(landmarks)
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


# ---------------------------------------------------------------------------------------------------------------
# The portrait


@dataclass(frozen=True, eq=False)
class Portrait:
    """A decoded portrait and its face, before any engine's preparation. Arrays are read-only."""

    key: str  # content hash of the bytes
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    box: Box  # the face square, photo coordinates
    landmarks: np.ndarray  # (68, 2) float64, photo coordinates
    faces_seen: int
    detector: Detector  # which dlib detector found the face

    def __post_init__(self) -> None:
        for array in (self.image, self.landmarks):
            array.setflags(write=False)


def avatar_key(data: bytes) -> str:
    """Content hash (sha256 hex) of the input bytes and the version of what is made from them."""
    digest = hashlib.sha256(f"avatar/{ALGORITHM_VERSION}\n".encode())
    digest.update(data)
    return digest.hexdigest()


def read_portrait(data: bytes, limits: AvatarLimits = DEFAULT_LIMITS) -> Portrait:
    """Uploaded portrait bytes → the picture and its face; raises the errors of :mod:`gateway.errors`."""
    t0 = time.perf_counter()
    image = decode_image(data, limits)
    height, width = image.shape[:2]
    face = detect_face(image)
    if face.size_px < limits.min_face_px:
        raise FaceTooSmall(face.size_px, limits.min_face_px)
    box = face_square(face.landmarks, width, height)
    if box.width < 2 or box.height < 2:  # landmarks far outside the picture: not a usable face
        raise NoFaceFound()
    log.info(
        "portrait %dx%d: %d face(s) by %s, face %d px, box %s, %.0f ms",
        width,
        height,
        face.faces_seen,
        face.detector,
        face.size_px,
        tuple(box),
        1e3 * (time.perf_counter() - t0),
    )
    return Portrait(avatar_key(data), image, box, face.landmarks, face.faces_seen, face.detector)
