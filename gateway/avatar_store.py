"""Portrait → everything a session needs, once per portrait, cached by content hash within a byte budget.

dlib, the crops and the framings run in a worker thread; each engine adds its own part once (SadTalker's
coefficients and keypoints come from Triton: ``gateway.engines``). The record keeps what sessions read — the
small output framings, the face crops, the landmarks, the engines' parts — and not the uploaded photo, so a
25-megapixel upload costs a few megabytes in the cache, not 75.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gateway.avatars import Avatar, AvatarLimits, Box, avatar_key, prepare_avatar
from gateway.framing import Framing, make_framings

T = TypeVar("T")


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
    crop: np.ndarray  # (256, 256, 3) uint8 RGB: SadTalker's crop of the photo (its generator's source)
    aligned: np.ndarray  # (224, 224, 3) uint8 RGB: that crop aligned for face_recon
    parts: dict[str, Any] = field(default_factory=dict)  # engine name → what that engine prepared

    def __post_init__(self) -> None:
        for array in (self.landmarks, self.crop, self.aligned):
            array.setflags(write=False)

    def add_part(self, engine: str, part: Any) -> None:
        self.parts[engine] = part

    def part(self, engine: str, kind: type[T]) -> T:
        """The part ``engine`` prepared (see ``Engine.prepare``)."""
        part = self.parts.get(engine)
        if not isinstance(part, kind):
            raise RuntimeError(f"avatar {self.id[:12]} has no prepared {engine} part")
        return part

    @property
    def nbytes(self) -> int:
        arrays = sum(int(a.nbytes) for a in (self.landmarks, self.crop, self.aligned))
        parts = sum(int(getattr(part, "nbytes", 0)) for part in self.parts.values())
        return arrays + parts + sum(f.nbytes for f in self.framings.values())

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


class AvatarStore:
    """The most recently used avatars, in memory, within ``capacity_bytes``."""

    def __init__(self, limits: AvatarLimits, *, capacity_bytes: int, max_output_side: int = 1280) -> None:
        self.limits = limits
        self.capacity_bytes = capacity_bytes
        self.max_output_side = max_output_side
        self._avatars: OrderedDict[str, AvatarState] = OrderedDict()
        self._sizes: dict[str, int] = {}  # as counted when added (a record's parts may grow later)
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
            aligned=avatar.aligned.copy(),
        )
        self._put(state)
        return state

    def resize(self, state: AvatarState) -> None:
        """Account for a record that grew (an engine added its part), evicting others if needed."""
        if self._avatars.get(state.id) is state:
            self._bytes += state.nbytes - self._sizes[state.id]
            self._sizes[state.id] = state.nbytes
            self._evict()

    def _prepare(self, data: bytes) -> tuple[Avatar, dict[str, Framing]]:
        avatar = prepare_avatar(data, limits=self.limits)
        return avatar, make_framings(avatar.image, avatar.box, self.max_output_side)

    def _put(self, state: AvatarState) -> None:
        if state.id in self._avatars:
            return
        self._avatars[state.id] = state
        self._sizes[state.id] = state.nbytes
        self._bytes += state.nbytes
        self._evict()

    def _evict(self) -> None:
        # The newest record always stays, even alone over the budget: the session that made it needs it.
        while self._bytes > self.capacity_bytes and len(self._avatars) > 1:
            evicted, _ = self._avatars.popitem(last=False)
            self._bytes -= self._sizes.pop(evicted)
