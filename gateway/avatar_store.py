"""Portrait → everything a session needs, once per portrait, cached by content hash within a byte budget.

dlib and the crop run in a worker thread; the ``avatar`` ensemble gives the 3DMM coefficients and the
canonical keypoints; the ``mapping`` model on the source window gives the source keypoints. The record keeps
what sessions read — the small output framings, the face crop, the coefficients — and not the uploaded photo,
so a 25-megapixel upload costs a few megabytes in the cache, not 75.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.avatars import Avatar, AvatarLimits, Box, avatar_key, prepare_avatar
from gateway.framing import Framing, make_framings
from gateway.triton import TritonClient
from lipsync.timeline import source_semantics, source_window


@dataclass(frozen=True, eq=False)
class AvatarState:
    """An avatar as sessions use it. Arrays are read-only: one record is shared by every session."""

    id: str
    width: int  # the uploaded photo, upright
    height: int
    box: Box  # SadTalker's face box, photo coordinates
    landmarks: np.ndarray  # (68, 2) float64, photo coordinates
    faces_seen: int
    framings: dict[str, Framing]
    crop: np.ndarray  # (256, 256, 3) uint8 RGB: the generator's source
    source: np.ndarray  # (70,) the portrait's semantics
    kp_canonical: np.ndarray  # (1, 15, 3)
    kp_source: np.ndarray  # (1, 15, 3)

    def __post_init__(self) -> None:
        for array in (self.landmarks, self.crop, self.source, self.kp_canonical, self.kp_source):
            array.setflags(write=False)

    @property
    def source_image(self) -> np.ndarray:
        """(1, 3, 256, 256) float32 in [0, 1]: the crop as the generator reads it."""
        return _chw(self.crop)

    @property
    def nbytes(self) -> int:
        arrays = (self.landmarks, self.crop, self.source, self.kp_canonical, self.kp_source)
        return sum(int(a.nbytes) for a in arrays) + sum(f.nbytes for f in self.framings.values())

    def describe(self) -> dict[str, Any]:
        """What ``POST /v1/avatars`` answers."""
        return {
            "avatar_id": self.id,
            "width": self.width,
            "height": self.height,
            "box": list(self.box),
            "faces_seen": self.faces_seen,
            "framings": {
                name: dict(zip(("width", "height"), f.size, strict=True)) for name, f in self.framings.items()
            },
        }


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


class AvatarStore:
    """The most recently used avatars, in memory, within ``capacity_bytes``."""

    def __init__(
        self, triton: TritonClient, limits: AvatarLimits, *, capacity_bytes: int, max_output_side: int = 1280
    ) -> None:
        self.triton = triton
        self.limits = limits
        self.capacity_bytes = capacity_bytes
        self.max_output_side = max_output_side
        self._avatars: OrderedDict[str, AvatarState] = OrderedDict()
        self._bytes = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._avatars)

    def get(self, avatar_id: str) -> AvatarState | None:
        state = self._avatars.get(avatar_id)
        if state is not None:
            self._avatars.move_to_end(avatar_id)
        return state

    async def add(self, data: bytes) -> AvatarState:
        """Prepare (or find) the avatar of these portrait bytes; raises gateway.errors on bad input."""
        if (known := self.get(avatar_key(data))) is not None:
            return known
        avatar, framings = await asyncio.to_thread(self._prepare, data)
        source_image = _chw(avatar.crop)
        out = await self.triton.infer(
            "avatar", {"crop": source_image, "aligned": _chw(avatar.aligned)}, ["coeffs", "kp_canonical"]
        )
        source = source_semantics(out["coeffs"][0])
        kp = await self.triton.infer(
            "mapping", {"window": source_window(source), "kp_canonical": out["kp_canonical"]}, ["kp_driving"]
        )
        height, width = avatar.image.shape[:2]
        state = AvatarState(
            id=avatar.key,
            width=width,
            height=height,
            box=avatar.box,
            landmarks=avatar.landmarks.copy(),
            faces_seen=avatar.faces_seen,
            framings=framings,
            crop=avatar.crop.copy(),
            source=source,
            kp_canonical=out["kp_canonical"],
            kp_source=kp["kp_driving"],
        )
        self._put(state)
        return state

    def _prepare(self, data: bytes) -> tuple[Avatar, dict[str, Framing]]:
        avatar = prepare_avatar(data, limits=self.limits)
        return avatar, make_framings(avatar.image, avatar.box, self.max_output_side)

    def _put(self, state: AvatarState) -> None:
        if state.id in self._avatars:
            return
        self._avatars[state.id] = state
        self._bytes += state.nbytes
        # The newest record always stays, even alone over the budget: the session that made it needs it.
        while self._bytes > self.capacity_bytes and len(self._avatars) > 1:
            _, evicted = self._avatars.popitem(last=False)
            self._bytes -= evicted.nbytes
