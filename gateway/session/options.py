"""What one session renders: the engine's options, and how the session runs them.

Every engine's options model subclasses :class:`EngineOptions`, which holds the options every engine takes;
the engine adds its own fields and fixes ``engine`` to its name (``gateway.engines.<name>.options``). The
protocols validate the options a client sends into the model of the engine it names
(``gateway.engines.parse_engine_options``); a session then carries them in :class:`SessionOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["clip", "conversation"]
FramingName = Literal["portrait", "face"]

T = TypeVar("T", bound="EngineOptions")


class EngineOptions(BaseModel):
    """The options every engine takes, as the ``start`` message's ``options`` carries them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The engine's one line where a client offers the choice (GET /v1/info, the page); its name when empty.
    label: ClassVar[str] = ""

    engine: str
    enhance: bool = False  # GFPGAN on the rendered face
    seed: int | None = Field(None, ge=0, lt=2**31)
    chunk_frames: int = Field(8, ge=1, le=25)  # frames per fragment (and per render call)
    framing: FramingName = "portrait"
    # Debugging: each frame's number drawn in its top-left corner (gateway.media.framecode), for latency probes.
    frame_code: bool = False

    def mode_problem(self, mode: Mode) -> str | None:
        """Why a session in ``mode`` cannot run with these options (the client is told), or None."""
        return None

    @classmethod
    def for_lipsync_request(cls, request: Mapping[str, Any]) -> SessionOptions:
        """A session of this engine for the compatible request/response protocol, whose fields are Wav2Lip's
        inference options (``pads``, ``batch_size``, ``no_segmentation``, ``no_sr``): an engine with no use for
        them runs with its defaults."""
        return SessionOptions(cls.model_validate({}))


@dataclass(frozen=True)
class SessionOptions:
    """A session's engine options, its mode, and the first fragment's size (a setting unless a test says)."""

    engine_options: EngineOptions
    mode: Mode = "clip"
    first_chunk_frames: int | None = None  # the first fragment's frames (fewer: a faster first frame)
    # Per fragment; the engine options' unless a request/response protocol asks for more (``batch_size``).
    chunk_frames_override: int | None = None

    @property
    def engine(self) -> str:
        return self.engine_options.engine

    @property
    def enhance(self) -> bool:
        return self.engine_options.enhance

    @property
    def seed(self) -> int | None:
        return self.engine_options.seed

    @property
    def chunk_frames(self) -> int:
        return self.chunk_frames_override or self.engine_options.chunk_frames

    @property
    def framing(self) -> FramingName:
        return self.engine_options.framing

    @property
    def frame_code(self) -> bool:
        return self.engine_options.frame_code

    def of(self, kind: type[T]) -> T:
        """The engine options as the engine's own model (engines call this with theirs)."""
        if not isinstance(self.engine_options, kind):
            raise TypeError(f"{self.engine} options are not {kind.__name__}")
        return self.engine_options
