"""Portrait (or a short video) → everything a session needs, once per upload, cached by content hash within a byte
budget.

dlib, the framings and the parts the served engines cut from the photo run in a worker thread; each engine
completes its own part once (some with Triton: ``gateway.engines``). The record keeps what sessions read — the
small output framings, the landmarks, the engines' parts — and not the uploaded photo, so a 25-megapixel
upload costs a few megabytes in the cache, not 75.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from gateway.avatars.framing import Framing, make_framings
from gateway.avatars.portrait import AvatarLimits, Box, Detector, Portrait, avatar_key, read_portrait
from gateway.avatars.video import DEFAULT_CLIP_LIMITS, AvatarClip, ClipLimits, read_clip, sniff_video
from gateway.errors import PreparationBusy, UnknownAvatar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class AvatarState:
    """An avatar as sessions use it. Arrays are read-only: one record is shared by every session."""

    id: str
    width: int  # the uploaded photo, upright
    height: int
    box: Box  # the face square, photo coordinates
    landmarks: np.ndarray  # (68, 2) float64, photo coordinates
    faces_seen: int
    framings: dict[str, Framing]
    detector: Detector = "hog"  # which dlib detector found the face (records from before it was kept: HOG's)
    parts: dict[str, Any] = field(default_factory=dict)  # engine name → what that engine prepared
    # A video avatar's frames (its framings are then those of frame 0, the landmarks frame 0's); None: a photo.
    clip: AvatarClip | None = None

    def __post_init__(self) -> None:
        self.landmarks.setflags(write=False)

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
        parts = sum(int(getattr(part, "nbytes", 0)) for part in self.parts.values())
        clip = 0 if self.clip is None else self.clip.nbytes
        return int(self.landmarks.nbytes) + parts + clip + sum(f.nbytes for f in self.framings.values())

    def describe(self) -> dict[str, Any]:
        """What ``POST /v1/avatars`` answers."""
        return {
            "avatar_id": self.id,
            "width": self.width,
            "height": self.height,
            "box": list(self.box),
            "faces_seen": self.faces_seen,
            "detector": self.detector,
            "framings": {
                name: dict(zip(("width", "height"), f.size, strict=True)) for name, f in self.framings.items()
            },
            "kind": "photo" if self.clip is None else "video",
            "frames": 1 if self.clip is None else len(self.clip),
            "duration": None if self.clip is None else self.clip.duration,
        }


class PortraitParts(Protocol):
    """An engine as the store sees it: what it keeps of the full-resolution photo (``Engine.portrait_part``)."""

    @property
    def name(self) -> str: ...

    def portrait_part(self, portrait: Portrait) -> Any | None: ...


class Shared(Protocol):
    """Where records are shared between gateways (``gateway.avatars.shared``); ``load``/``save`` raise on outage."""

    async def load(self, avatar_id: str) -> AvatarState | None: ...

    async def save(self, state: AvatarState) -> None: ...


class AvatarStore:
    """The most recently used avatars, in memory, within ``capacity_bytes``; with ``shared`` (Redis), also
    every avatar any gateway of the fleet prepared."""

    def __init__(
        self,
        limits: AvatarLimits,
        *,
        capacity_bytes: int,
        max_output_side: int = 1280,
        shared: Shared | None = None,
        preparations: int = 2,
        waiting: int = 8,
        clip_limits: ClipLimits = DEFAULT_CLIP_LIMITS,
    ) -> None:
        """At most ``preparations`` portraits are decoded and prepared at once (each can take hundreds of MB
        and a core); ``waiting`` more wait their turn, and any beyond are refused as busy."""
        self.shared = shared
        self._preparing = Turns(preparations, waiting)
        self._making: dict[str, asyncio.Future[AvatarState]] = {}  # preparations in progress, by portrait key
        self.limits = limits
        self.clip_limits = clip_limits
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

    def peek(self, avatar_id: str) -> AvatarState | None:
        """The avatar if this gateway holds it (no shared lookup)."""
        state = self._avatars.get(avatar_id)
        if state is not None:
            self._avatars.move_to_end(avatar_id)
        return state

    async def get(self, avatar_id: str) -> AvatarState | None:
        """The avatar from memory, else from the shared store; UnknownAvatar (in words) when that is down."""
        if (state := self.peek(avatar_id)) is not None or self.shared is None:
            return state
        try:
            state = await self.shared.load(avatar_id)
        except Exception as err:  # the shared store's outage, whatever it raised
            log.warning("shared avatar store unavailable: %s", err)
            raise UnknownAvatar(
                avatar_id, "the shared avatar store is unreachable and this server does not hold it"
            ) from err
        if state is not None:
            self._put(state)
        return state

    async def add(self, data: bytes, engines: Sequence[PortraitParts] = ()) -> AvatarState:
        """Prepare (or find) the avatar of these portrait bytes, with the parts ``engines`` cut from the photo;
        raises gateway.errors on bad input. (A record found made without an engine's part gets it later from
        its framings: ``Engine.prepare``.)

        The same portrait sent again while it is being prepared waits for that preparation instead of starting
        its own (a flood of one large photo costs one decode); it carries on if its first requester leaves."""
        key = avatar_key(data)
        if (known := self.peek(key)) is not None:
            return known
        if (making := self._making.get(key)) is None:
            making = self._making[key] = asyncio.ensure_future(self._make(key, data, tuple(engines)))
            making.add_done_callback(lambda done: self._made(key, done))
        return await asyncio.shield(making)

    def _made(self, key: str, done: asyncio.Future[AvatarState]) -> None:
        self._making.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: its requesters have it, or have all left

    async def _make(self, key: str, data: bytes, engines: tuple[PortraitParts, ...]) -> AvatarState:
        if self.shared is not None:
            with contextlib.suppress(UnknownAvatar):  # an outage: make it again from the upload
                if (shared := await self.get(key)) is not None:
                    return shared
        async with self._preparing:
            state = await asyncio.to_thread(self._prepare, data, engines)
        self._put(state)
        await self._share(state)
        return state

    async def updated(self, state: AvatarState) -> None:
        """A record grew (an engine added its part): account for it, and share it again."""
        if self._avatars.get(state.id) is state:
            self._bytes += state.nbytes - self._sizes[state.id]
            self._sizes[state.id] = state.nbytes
            self._evict()
        await self._share(state)

    async def _share(self, state: AvatarState) -> None:
        if self.shared is None:
            return
        try:
            await self.shared.save(state)
        except Exception as err:  # an outage costs sharing, not the upload: this gateway keeps the avatar
            log.warning("could not share avatar %s (shared store unavailable: %s)", state.id[:12], err)

    def _prepare(self, data: bytes, engines: tuple[PortraitParts, ...]) -> AvatarState:
        if sniff_video(data) is not None:
            return self._prepare_clip(data)
        portrait = read_portrait(data, self.limits)
        height, width = portrait.image.shape[:2]
        state = AvatarState(
            id=portrait.key,
            width=width,
            height=height,
            box=portrait.box,
            landmarks=portrait.landmarks.copy(),
            faces_seen=portrait.faces_seen,
            detector=portrait.detector,
            framings=make_framings(portrait.image, portrait.box, self.max_output_side),
        )
        for engine in engines:
            if (part := engine.portrait_part(portrait)) is not None:
                state.add_part(engine.name, part)
        return state

    def _prepare_clip(self, data: bytes) -> AvatarState:
        """A video avatar: engines cut nothing from it at upload (those that take video work per frame)."""
        prepared = read_clip(data, self.clip_limits, self.limits, self.max_output_side)
        return AvatarState(
            id=prepared.key,
            width=prepared.width,
            height=prepared.height,
            box=prepared.box,
            landmarks=prepared.clip.landmarks[0].copy(),
            faces_seen=prepared.faces_seen,
            detector=prepared.detector,
            framings=prepared.framings,
            clip=prepared.clip,
        )

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


class Turns:
    """``async with turns:`` runs at most ``at_once`` holders together and lets ``waiting`` more queue (in
    arrival order); one more is refused at once with PreparationBusy rather than queueing without bound."""

    def __init__(self, at_once: int, waiting: int) -> None:
        self._semaphore = asyncio.Semaphore(at_once)
        self.at_once = at_once
        self.waiting_limit = waiting
        self.waiting = 0

    async def __aenter__(self) -> None:
        if self._semaphore.locked():
            if self.waiting >= self.waiting_limit:
                raise PreparationBusy(self.at_once, self.waiting)
            self.waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()
