"""SadTalker's view of a portrait: its 256² crop of the face square and that crop aligned to 224² for face_recon.

From OpenTalker/SadTalker (``src/utils/croper.py``, ``src/utils/preprocess.py`` ``CropAndExtract.generate``,
and ``src/face3d/util/preprocess.py`` ``align_img`` from Deep3DFaceRecon_pytorch; Apache-2.0). Deviations:

- Upstream resizes the crop bilinearly in both directions; we shrink with area averaging (no aliasing) and
  enlarge with bicubic interpolation, which paste-back's bicubic resize undoes to within a level or two.
- Upstream detects landmarks a second time on the resized crop for the 224² alignment; we map the landmarks we
  already have into crop coordinates (same points, one detection).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from gateway.avatars.portrait import DEFAULT_LIMITS, AvatarLimits, Box, read_portrait

CROP_SIZE = 256  # the official renderer's source image (its 512 checkpoints are not exported)
# face_recon input (Deep3DFaceRecon): 224² crop, standard face scaled to 102 px per unit.
RECON_SIZE = 224
RECON_RESCALE = 102.0

DATA_DIR = Path(__file__).resolve().parent / "data"


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
    raw = json.loads((DATA_DIR / "similarity_Lm3D_all.json").read_text())
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


@dataclass(frozen=True, eq=False)
class SadTalkerCrop:
    """The portrait as SadTalker's networks take it. Arrays are read-only: avatars are shared."""

    crop: np.ndarray  # (256, 256, 3) uint8 RGB: the generator's source image, cut from the face square
    aligned: np.ndarray  # (224, 224, 3) uint8 RGB: the face_recon input
    align_params: np.ndarray  # (5,) float64 [w0, h0, s, tx, ty]

    def __post_init__(self) -> None:
        for array in (self.crop, self.aligned, self.align_params):
            array.setflags(write=False)


def sadtalker_crop(image: np.ndarray, box: Box, landmarks: np.ndarray) -> SadTalkerCrop:
    """The crop of ``box`` (the face square) from ``image`` and its alignment (``landmarks`` in the same pixels)."""
    crop = cut_and_resize(image, box, CROP_SIZE)
    aligned, align_params = align_for_recon(crop, to_crop_coordinates(landmarks, box, CROP_SIZE))
    return SadTalkerCrop(crop, aligned, align_params)


@dataclass(frozen=True, eq=False)
class CroppedPortrait:
    """A portrait and SadTalker's crop of it, side by side (tests, benchmarks and tools)."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    box: Box  # the face square, photo coordinates
    landmarks: np.ndarray  # (68, 2) float64, photo coordinates
    faces_seen: int
    crop: np.ndarray  # (256, 256, 3) uint8 RGB
    aligned: np.ndarray  # (224, 224, 3) uint8 RGB
    align_params: np.ndarray  # (5,) float64 [w0, h0, s, tx, ty]


def prepare_avatar(data: bytes, *, limits: AvatarLimits = DEFAULT_LIMITS) -> CroppedPortrait:
    """Portrait bytes → the portrait and SadTalker's crop of it; raises the errors of :mod:`gateway.errors`."""
    portrait = read_portrait(data, limits)
    crop = sadtalker_crop(portrait.image, portrait.box, portrait.landmarks)
    return CroppedPortrait(
        portrait.key,
        portrait.image,
        portrait.box,
        portrait.landmarks,
        portrait.faces_seen,
        crop.crop,
        crop.aligned,
        crop.align_params,
    )
