"""The JSON messages the server sends on its WebSockets, typed and in one place: those of ``/ws/stream``
(docs/protocol.md §3) and the answers of the compatible ``/ws/lipsync`` (§4).

They live with the session, not the transport, because the session makes most of them (``ready``, ``stats``,
``interrupted``, ``end``) and the transport depends on the session, never the reverse; the transport makes the
rest (errors, the compatible answers) and sends them all.

Each message is a frozen dataclass and ``to_json()`` is exactly the object on the wire. A field declared with
``metadata=OPTIONAL`` is left out while it is None, because the protocol has that key only sometimes (``warning``,
``first_fragment_parts``, a clip's ``end.timeline``); any other None is sent as null (``render_fps_estimate``, a
clip's ``limits.max_ahead_ms``). A message also reads as that mapping (``stats["frames"]``), so whoever takes it
from a session — the socket, the offline collector, a test — sees the protocol's keys without knowing the type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from gateway.errors import LipsyncError

# The metadata of a field whose key is absent from the JSON while its value is None.
OPTIONAL = MappingProxyType({"omitted_while_none": True})


@dataclass(frozen=True, eq=False)  # eq=False everywhere keeps Mapping's equality: a message equals its JSON's dict
class Message(Mapping[str, Any]):
    """Base of the outgoing messages (and of the objects nested in them)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this message, keys in the order the fields are declared."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None and spec.metadata.get("omitted_while_none"):
                continue
            out[spec.name] = _to_json(value)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


def _to_json(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------- /ws/stream


@dataclass(frozen=True, eq=False, kw_only=True)
class Limits(Message):
    """``ready.limits``: the session's limits; null where they do not apply to its mode."""

    max_message_bytes: int
    max_session_seconds: float
    max_conversation_seconds: float | None
    idle_timeout_s: float | None
    max_ahead_ms: float | None


@dataclass(frozen=True, eq=False, kw_only=True)
class Ready(Message):
    type: Literal["ready"] = field(default="ready", init=False)
    engine: str
    seed: int
    mime_type: str
    width: int
    height: int
    fps: int
    mode: str
    render_fps_estimate: float | None  # null until this server has measured the engine
    warning: str | None = field(default=None, metadata=OPTIONAL)
    model_lookahead_ms: float
    lookahead_ms: float
    demo: bool
    session_id: str
    limits: Limits


@dataclass(frozen=True, eq=False, kw_only=True)
class FirstFragmentParts(Message):
    """Where the time to the first fragment went (milliseconds)."""

    audio_lookahead_ms: float
    waiting_for_audio_ms: float
    triton_ms: float
    encode_ms: float
    send_ms: float


@dataclass(frozen=True, eq=False, kw_only=True)
class UtteranceFirstFrame(Message):
    """An entry of ``stats.utterances``: from an utterance's first audio byte to the fragment with its first frame."""

    utterance_id: str
    first_frame: int
    first_frame_ms: float


@dataclass(frozen=True, eq=False, kw_only=True)
class Stats(Message):
    """Sent after each media segment. The first one adds ``first_fragment_parts``; a conversation adds
    ``behind_ms`` and ``queued_audio_seconds``, and ``utterances`` where an utterance's first frame was sent."""

    type: Literal["stats"] = field(default="stats", init=False)
    frames: int
    audio_seconds: float
    rendered_seconds: float
    render_fps: float
    delay_ms: float
    first_fragment_ms: float
    first_fragment_parts: FirstFragmentParts | None = field(default=None, metadata=OPTIONAL)
    behind_ms: float | None = field(default=None, metadata=OPTIONAL)
    queued_audio_seconds: float | None = field(default=None, metadata=OPTIONAL)
    utterances: list[UtteranceFirstFrame] | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True, eq=False, kw_only=True)
class Interrupted(Message):
    """The answer to `interrupt`: ``frame`` is the first idle frame, ``next_frame`` the first not sent yet."""

    type: Literal["interrupted"] = field(default="interrupted", init=False)
    frame: int
    next_frame: int


@dataclass(frozen=True, eq=False, kw_only=True)
class SpeechSegment(Message):
    """A stretch of ``end.timeline`` played from the received audio (``utterance`` is null outside one)."""

    kind: Literal["speech"] = field(default="speech", init=False)
    start: int
    end: int
    received: int
    utterance: str | None


@dataclass(frozen=True, eq=False, kw_only=True)
class SilenceSegment(Message):
    kind: Literal["silence"] = field(default="silence", init=False)
    start: int
    end: int


PlayedSegment = SpeechSegment | SilenceSegment


@dataclass(frozen=True, eq=False, kw_only=True)
class End(Message):
    """After the last media segment; a conversation's carries the audio it played (``timeline``)."""

    type: Literal["end"] = field(default="end", init=False)
    frames: int
    duration: float
    timeline: list[PlayedSegment] | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True, eq=False, kw_only=True)
class StreamError(Message):
    type: Literal["error"] = field(default="error", init=False)
    code: str
    message: str

    @classmethod
    def of(cls, error: LipsyncError) -> StreamError:
        return cls(code=error.code, message=error.message)


# ------------------------------------------------------------------------------------------- /ws/lipsync


@dataclass(frozen=True, eq=False, kw_only=True)
class CompatVideo(Message):
    status: Literal["success"] = field(default="success", init=False)
    video: str  # base64 MP4


@dataclass(frozen=True, eq=False, kw_only=True)
class CompatError(Message):
    """Every error of the compatible protocol, in its own words (never the streaming protocol's type/code)."""

    status: Literal["error"] = field(default="error", init=False)
    message: str

    @classmethod
    def of(cls, error: LipsyncError) -> CompatError:
        return cls(message=error.message)
