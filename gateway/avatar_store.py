"""Portrait → everything a session needs, once per portrait, cached by content hash.

dlib and the crop run in a worker thread; the ``avatar`` ensemble gives the 3DMM coefficients and the
canonical keypoints; the ``mapping`` model on the source window gives the source keypoints.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gateway.avatars import Avatar, AvatarLimits, prepare_avatar
from gateway.triton import TritonClient
from lipsync.timeline import source_semantics, source_window


@dataclass(frozen=True)
class AvatarState:
    avatar: Avatar
    source: np.ndarray  # (70,) the portrait's semantics
    source_image: np.ndarray  # (1, 3, 256, 256) float32 in [0, 1]: the generator's source
    kp_canonical: np.ndarray  # (1, 15, 3)
    kp_source: np.ndarray  # (1, 15, 3)

    @property
    def id(self) -> str:
        return self.avatar.key


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


class AvatarStore:
    """The most recent ``capacity`` avatars, in memory."""

    def __init__(self, triton: TritonClient, limits: AvatarLimits, capacity: int = 64) -> None:
        self.triton = triton
        self.limits = limits
        self.capacity = capacity
        self._avatars: OrderedDict[str, AvatarState] = OrderedDict()

    def get(self, avatar_id: str) -> AvatarState | None:
        state = self._avatars.get(avatar_id)
        if state is not None:
            self._avatars.move_to_end(avatar_id)
        return state

    async def add(self, data: bytes) -> AvatarState:
        """Prepare (or find) the avatar of these portrait bytes; raises gateway.errors on bad input."""
        avatar = await asyncio.to_thread(prepare_avatar, data, limits=self.limits)
        if (known := self.get(avatar.key)) is not None:
            return known
        source_image = _chw(avatar.crop)
        out = await self.triton.infer(
            "avatar", {"crop": source_image, "aligned": _chw(avatar.aligned)}, ["coeffs", "kp_canonical"]
        )
        source = source_semantics(out["coeffs"][0])
        kp = await self.triton.infer(
            "mapping", {"window": source_window(source), "kp_canonical": out["kp_canonical"]}, ["kp_driving"]
        )
        state = AvatarState(avatar, source, source_image, out["kp_canonical"], kp["kp_driving"])
        self._avatars[avatar.key] = state
        while len(self._avatars) > self.capacity:
            self._avatars.popitem(last=False)
        return state
