"""The interface between an engine and the rest of the gateway.

An :class:`Engine` says which Triton models it needs, makes its part of an avatar record (from the decoded
portrait at upload, then with Triton once), and starts an :class:`EngineRun` per session: a timeline of what can
be computed from the audio so far, the Triton calls that compute it, and how its faces are pasted into the
output framing. The session, the muxer and the transports are the same for every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.session.options import EngineOptions, SessionOptions
from gateway.session.timeline import AudioTimeline, RenderRequest
from gateway.triton.client import TritonClient

# A rendered face (S, S, 3) uint8 and the session frame it is for → the whole output frame (a new array). The
# frame number matters for a video avatar, whose picture changes from frame to frame.
Paste = Callable[[np.ndarray, int], np.ndarray]


def same_picture(paste_back: Callable[[np.ndarray], np.ndarray]) -> Paste:
    """The paste of a photo avatar: every frame is the one picture with the face pasted in."""
    return lambda face, frame: paste_back(face)


class EngineRun(Protocol):
    """One session's engine: its timeline, the Triton calls it needs, and its paste-back."""

    @property
    def timeline(self) -> AudioTimeline: ...

    @property
    def paste(self) -> Paste: ...

    @property
    def lookahead_ms(self) -> float:
        """The audio a frame's models read after its own start (audio blocks and chunking add to the wait)."""
        ...

    @property
    def audio_block(self) -> int:
        """Frames per audio-model call (expression or mel blocks): a frame may wait for its block's last."""
        ...

    def calls(self) -> list[Coroutine[Any, Any, None]]:
        """Calls that became possible (their results go back into the timeline); run them concurrently."""
        ...

    def render_requests(self) -> list[RenderRequest]:
        """The next chunks that can be rendered, in order."""
        ...

    async def render(self, request: RenderRequest) -> np.ndarray:
        """The chunk's faces (K, S, S, 3) uint8 RGB."""
        ...


class Engine(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def options_model(self) -> type[EngineOptions]:
        """Its options: the protocols validate a client's into this model."""
        ...

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        """The Triton models (ensembles) a session with these options calls."""
        ...

    def portrait_part(self, portrait: Portrait) -> Any | None:
        """What this engine needs from the full-resolution photo (numpy, in the upload's worker thread), kept
        as its part of the record; None when it needs nothing beyond the record's framings and landmarks."""
        ...

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        """Complete this engine's part of the avatar record, once (a no-op when it is there)."""
        ...

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> EngineRun:
        """A run for one session (the avatar's part is prepared)."""
        ...

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> Any:
        """This engine's avatar part of ``avatar`` back from its ``to_arrays()`` (records shared between
        gateways); ValueError when the arrays are not what this engine wrote for that avatar."""
        ...


class EngineClass(Protocol):
    """What the registry holds: an engine's class, made once per gateway.

    An engine that animates video avatars (``AvatarState.clip``) says so in a class attribute
    ``takes_video = True``; the others are given photos only (``gateway.engines.takes_video``).

    An engine whose Triton models have an int8 form for the cpu target (``python -m export quantize``, each the
    model's name as an export stage) lists them in a class attribute ``int8_models: tuple[str, ...]``; one
    without any need not declare it (``gateway.engines.quantizable_models``).
    """

    @property
    def name(self) -> str: ...

    @property
    def options_model(self) -> type[EngineOptions]: ...

    def __call__(self, audio_block: int) -> Engine:
        """``audio_block``: frames per audio-model call (its expression or mel blocks; a setting)."""
        ...
