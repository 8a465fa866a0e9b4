"""What the output video shows: the whole portrait (downscaled) or a square around the face.

A 25-megapixel photo must not become a 25-megapixel H.264 stream: browsers cannot decode it and x264 cannot
encode it live. Each avatar therefore keeps two small framings of its portrait, made once, and forgets the
original:

- ``portrait``: the whole photo, downscaled so that its long side is at most ``max_side`` (default 1280), with
  even dimensions (H.264 4:2:0 wants them);
- ``face``: a square around the face box, ``FACE_FRAME_SIZE``² pixels, as large as twice the box where the
  photo allows.

Each framing knows how photo coordinates map into it, so any engine's face box (photo coordinates) can be
pasted into it. Framing a portrait is a fixed function of the
pixels and the box, so sessions of the same avatar are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

from gateway.avatars.portrait import Box

FramingName = Literal["portrait", "face"]
FRAMINGS: tuple[str, ...] = get_args(FramingName)
FACE_FRAME_SIZE = 512
# The face square is this many times the face box's longer side (when the photo is large enough).
FACE_FRAME_CONTEXT = 2.0


@dataclass(frozen=True, eq=False)
class Framing:
    """One output framing: the picture every frame starts from, and how photo coordinates map into it.

    A photo point ``p`` is at ``(p − origin) · scale`` in the framing.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB, H and W even
    origin: tuple[float, float]  # the framing's top-left corner, in photo coordinates
    scale: tuple[float, float]  # framing pixels per photo pixel, (x, y)

    def __post_init__(self) -> None:
        height, width = self.image.shape[:2]
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or height % 2 or width % 2:
            raise ValueError(f"a framing is an (H, W, 3) uint8 image with even sides, got {self.image.shape}")
        self.image.setflags(write=False)

    def box(self, photo_box: Box) -> Box:
        """A photo box in framing coordinates, grown outwards to whole pixels and kept inside the framing."""
        (ox, oy), (sx, sy) = self.origin, self.scale
        width, height = self.size
        x0, y0 = math.floor((photo_box.x0 - ox) * sx), math.floor((photo_box.y0 - oy) * sy)
        x1, y1 = math.ceil((photo_box.x1 - ox) * sx), math.ceil((photo_box.y1 - oy) * sy)
        x0, y0 = min(max(0, x0), width - 1), min(max(0, y0), height - 1)
        return Box(x0, y0, min(width, max(x1, x0 + 1)), min(height, max(y1, y0 + 1)))

    def points(self, photo_points: np.ndarray) -> np.ndarray:
        """(N, 2) photo points (x, y) in framing coordinates."""
        return (np.asarray(photo_points, dtype=np.float64) - np.array(self.origin)) * np.array(self.scale)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes)


def _resize(region: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < region.shape[0] * region.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(region, (width, height), interpolation=interpolation))


def portrait_framing(image: np.ndarray, max_side: int) -> Framing:
    """The whole photo with its long side ≤ ``max_side`` and even sides (a copy even when nothing changes)."""
    if max_side < 2:
        raise ValueError(f"max_side must be ≥ 2, got {max_side}")
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(width, height))
    out_w = max(2, 2 * round(width * scale / 2))
    out_h = max(2, 2 * round(height * scale / 2))
    out = image.copy() if (out_w, out_h) == (width, height) else _resize(image, out_w, out_h)
    return Framing(out, (0.0, 0.0), (out_w / width, out_h / height))


def face_square(box: Box, width: int, height: int) -> Box:
    """The square around ``box`` that the ``face`` framing shows, in image coordinates.

    Twice the box's longer side where the photo allows, shifted to stay inside it; never smaller than the box.
    Only a very narrow photo (the box taller than the photo is wide) gives a square that leaves the photo:
    :func:`face_framing` fills the outside by repeating the edge pixels.
    """
    longest = max(box.width, box.height)
    side = int(max(min(longest * FACE_FRAME_CONTEXT, width, height), longest))
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2

    def start(centre: float, extent: int) -> int:
        first = round(centre - side / 2)
        return int(np.clip(first, 0, extent - side)) if side <= extent else first

    x0, y0 = start(cx, width), start(cy, height)
    return Box(x0, y0, x0 + side, y0 + side)


def _cut(image: np.ndarray, region: Box) -> np.ndarray:
    """``image[region]``, with the parts outside the image filled by repeating its edge pixels."""
    height, width = image.shape[:2]
    pad = (max(0, -region.y0), max(0, region.y1 - height), max(0, -region.x0), max(0, region.x1 - width))
    if any(pad):
        image = cv2.copyMakeBorder(image, *pad, borderType=cv2.BORDER_REPLICATE)
        region = Box(region.x0 + pad[2], region.y0 + pad[0], region.x1 + pad[2], region.y1 + pad[0])
    return image[region.y0 : region.y1, region.x0 : region.x1]


def face_framing(image: np.ndarray, box: Box, size: int = FACE_FRAME_SIZE) -> Framing:
    """A ``size``² square around the face (see :func:`face_square`)."""
    height, width = image.shape[:2]
    square = face_square(box, width, height)
    scale = size / square.width
    return Framing(_resize(_cut(image, square), size, size), (float(square.x0), float(square.y0)), (scale, scale))


def make_framings(image: np.ndarray, face_box: Box, max_side: int) -> dict[str, Framing]:
    """Both framings of a portrait, by name."""
    return {"portrait": portrait_framing(image, max_side), "face": face_framing(image, face_box)}
