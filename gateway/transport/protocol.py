"""Message schemas of the WebSocket protocols (docs/protocol.md), validated with pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from gateway.engines import lipsync_request_engine, options_model, parse_engine_options
from gateway.errors import BadMessage
from gateway.session.options import EngineOptions, SessionOptions

PROTOCOL_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioFormat(_Strict):
    format: Literal["pcm_s16le", "file"] = "pcm_s16le"
    sample_rate: int = Field(16_000, ge=8_000, le=192_000)
    channels: Literal[1] = 1


def _engine_options(value: Any) -> EngineOptions:
    """The ``options`` object in the model of the engine it names (the engines' options are a union keyed by
    ``engine``); a field's error is worded with its name, as pydantic words the other fields'."""
    if isinstance(value, EngineOptions):
        return value
    if not isinstance(value, dict):
        raise ValueError("options must be an object")
    try:
        return parse_engine_options(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}" if where else first["msg"]) from None


Options = Annotated[EngineOptions, BeforeValidator(_engine_options)]


def default_options() -> EngineOptions:
    return parse_engine_options({})


class Start(_Strict):
    type: Literal["start"]
    version: Literal[1] = 1
    avatar_id: str = Field(min_length=1, max_length=128)
    # clip: one audio stream, rendered as it arrives; conversation: on the wall clock, idle between utterances.
    mode: Literal["clip", "conversation"] = "clip"
    audio: AudioFormat = AudioFormat()
    options: Options = Field(default_factory=default_options)

    @model_validator(mode="after")
    def _mode_fits(self) -> Start:
        if self.mode == "conversation" and self.audio.format != "pcm_s16le":
            raise ValueError("conversation mode takes live PCM audio (audio.format `pcm_s16le`), not a file")
        problem = self.options.mode_problem(self.mode)
        if problem is not None:
            raise ValueError(problem)
        return self

    def session_options(self) -> SessionOptions:
        return SessionOptions(self.options, mode=self.mode)


class End(_Strict):
    type: Literal["end"]


class Interrupt(_Strict):
    """Conversation mode: stop the current utterance; what was queued is dropped."""

    type: Literal["interrupt"]


class Utterance(_Strict):
    """Conversation mode, optional: the audio that follows is the utterance ``id`` (stats report its latency)."""

    type: Literal["utterance"]
    id: str = Field(min_length=1, max_length=128)


Control = Annotated[End | Interrupt | Utterance, Field(discriminator="type")]
_CONTROL: TypeAdapter[End | Interrupt | Utterance] = TypeAdapter(Control)


Pad = Annotated[int, Field(ge=0, le=1000)]


class LipsyncRequest(BaseModel):
    """The compatible one-shot request of ``/ws/lipsync``: Wav2Lip's inference options, every one honoured.

    Fields other than these are accepted and ignored (clients of other servers send more).
    """

    model_config = ConfigDict(extra="allow")
    audio: str = Field(min_length=1)  # base64 audio file (WAV, MP3, …)
    image: str | None = Field(None, min_length=1)  # base64 portrait
    video: str | None = Field(None, min_length=1)  # base64 video to dub, instead of a portrait (MP4, MOV, WebM)
    fps: float = 25  # only 25: the engines render 25 frames per second
    pads: tuple[Pad, Pad, Pad, Pad] = (0, 10, 0, 0)  # the face box's padding [top, bottom, left, right]
    img_size: int = 96  # only 96: the Wav2Lip checkpoints' face size
    batch_size: int = Field(128, ge=1, le=128)  # frames per Triton request
    no_segmentation: bool = False  # True: paste the whole face box (feathered); False: only the lower face
    no_sr: bool = True  # False: GFPGAN enhances the face before it is pasted
    # Another engine renders with its own defaults where these fields mean nothing to it.
    engine: str = Field(default_factory=lipsync_request_engine)

    @model_validator(mode="after")
    def _supported(self) -> LipsyncRequest:
        if self.fps != 25:
            raise ValueError(f"fps must be 25 (the engines render 25 frames per second), got {self.fps:g}")
        if self.img_size != 96:
            raise ValueError(f"img_size must be 96 (the Wav2Lip checkpoints' face size), got {self.img_size}")
        return self

    @model_validator(mode="after")
    def _one_picture(self) -> LipsyncRequest:
        if (self.image is None) == (self.video is None):
            raise ValueError("send either `image` (a portrait) or `video` (a video to dub)")
        return self

    @model_validator(mode="after")
    def _known_engine(self) -> LipsyncRequest:
        options_model(self.engine)  # ValueError in words for an engine this gateway does not have
        return self

    def session_options(self) -> SessionOptions:
        return options_model(self.engine).for_lipsync_request(self.model_dump())


def describe_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def parse_start(text: str) -> Start:
    try:
        return Start.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"The first message must be a valid `start` message ({describe_error(err)}).") from err


def parse_options(**fields: object) -> EngineOptions:
    """Options from separate fields (query parameters); BadMessage when they do not fit together."""
    try:
        return parse_engine_options(fields)
    except ValidationError as err:
        raise BadMessage(f"Invalid options ({describe_error(err)}).") from err
    except ValueError as err:
        raise BadMessage(f"Invalid options ({err}).") from err


def parse_control(text: str) -> End | Interrupt | Utterance:
    try:
        return _CONTROL.validate_json(text)
    except ValidationError as err:
        raise BadMessage(
            f"After `start` only audio and the messages `end`, `interrupt` and `utterance` are expected "
            f"({describe_error(err)})."
        ) from err


def parse_lipsync(text: str) -> LipsyncRequest:
    try:
        return LipsyncRequest.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"Invalid request: {describe_error(err)}") from err
