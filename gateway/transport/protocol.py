"""Message schemas of the WebSocket protocols (docs/protocol.md), validated with pydantic."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from gateway.errors import BadMessage
from gateway.session.options import DEFAULT_PADS, EngineName, SessionOptions

PROTOCOL_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioFormat(_Strict):
    format: Literal["pcm_s16le", "file"] = "pcm_s16le"
    sample_rate: int = Field(16_000, ge=8_000, le=192_000)
    channels: Literal[1] = 1


Pad = Annotated[int, Field(ge=0, le=1000)]

# Options that only one engine reads: setting one with the other engine is a mistake worth saying.
ENGINE_ONLY = {
    "sadtalker": ("pose", "expression_scale", "pose_style", "blink"),
    "wav2lip": ("pads", "blend"),
}


class Options(_Strict):
    engine: EngineName = "sadtalker"
    enhance: bool = False
    seed: int | None = Field(None, ge=0, lt=2**31)
    chunk_frames: int = Field(8, ge=1, le=25)
    framing: Literal["portrait", "face"] = "portrait"
    # SadTalker
    pose: Literal["still", "audio"] = "still"
    expression_scale: float = Field(1.0, ge=0.0, le=3.0)
    pose_style: int = Field(0, ge=0, le=45)
    blink: bool = True
    # Wav2Lip: face box padding in photo pixels [top, bottom, left, right], and how the face is blended in
    pads: tuple[Pad, Pad, Pad, Pad] = DEFAULT_PADS
    blend: Literal["lower_face", "box"] = "lower_face"

    @model_validator(mode="after")
    def _options_of_this_engine(self) -> Options:
        for engine, names in ENGINE_ONLY.items():
            misplaced = [name for name in names if name in self.model_fields_set and engine != self.engine]
            if misplaced:
                verb = "applies" if len(misplaced) == 1 else "apply"
                raise ValueError(f"{', '.join(misplaced)} {verb} to the {engine} engine, not {self.engine}")
        return self

    def session_options(self) -> SessionOptions:
        return SessionOptions(**self.model_dump())


class Start(_Strict):
    type: Literal["start"]
    version: Literal[1] = 1
    avatar_id: str = Field(min_length=1, max_length=128)
    # clip: one audio stream, rendered as it arrives; conversation: on the wall clock, idle between utterances.
    mode: Literal["clip", "conversation"] = "clip"
    audio: AudioFormat = AudioFormat()
    options: Options = Options()

    @model_validator(mode="after")
    def _conversation_fits(self) -> Start:
        if self.mode == "conversation":
            if self.audio.format != "pcm_s16le":
                raise ValueError("conversation mode takes live PCM audio (audio.format `pcm_s16le`), not a file")
            if self.options.pose != "still":
                raise ValueError("conversation mode keeps the head still (options.pose `still`)")
        return self

    def session_options(self) -> SessionOptions:
        return dataclasses.replace(self.options.session_options(), mode=self.mode)


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


class LipsyncRequest(BaseModel):
    """The compatible one-shot request of ``/ws/lipsync``: Wav2Lip's inference options, every one honoured.

    Fields other than these are accepted and ignored (clients of other servers send more).
    """

    model_config = ConfigDict(extra="allow")
    audio: str = Field(min_length=1)  # base64 audio file (WAV, MP3, …)
    image: str = Field(min_length=1)  # base64 portrait
    fps: float = 25  # only 25: the engines render 25 frames per second
    pads: tuple[Pad, Pad, Pad, Pad] = DEFAULT_PADS  # Wav2Lip's face box padding [top, bottom, left, right]
    img_size: int = 96  # only 96: the Wav2Lip checkpoints' face size
    batch_size: int = Field(128, ge=1, le=128)  # frames per Triton request
    no_segmentation: bool = False  # True: paste the whole face box (feathered); False: only the lower face
    no_sr: bool = True  # False: GFPGAN enhances the face before it is pasted
    engine: EngineName = "wav2lip"  # "sadtalker" renders with SadTalker's defaults (the Wav2Lip fields unused)

    @model_validator(mode="after")
    def _supported(self) -> LipsyncRequest:
        if self.fps != 25:
            raise ValueError(f"fps must be 25 (the engines render 25 frames per second), got {self.fps:g}")
        if self.img_size != 96:
            raise ValueError(f"img_size must be 96 (the Wav2Lip checkpoints' face size), got {self.img_size}")
        return self

    def session_options(self) -> SessionOptions:
        if self.engine == "sadtalker":
            return SessionOptions()
        return SessionOptions(
            engine="wav2lip",
            enhance=not self.no_sr,
            chunk_frames=self.batch_size,
            pads=self.pads,
            blend="box" if self.no_segmentation else "lower_face",
        )


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def parse_start(text: str) -> Start:
    try:
        return Start.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"The first message must be a valid `start` message ({_describe(err)}).") from err


def parse_options(**fields: object) -> Options:
    """Options from separate fields (query parameters); BadMessage when they do not fit together."""
    try:
        return Options.model_validate(fields)
    except ValidationError as err:
        raise BadMessage(f"Invalid options ({_describe(err)}).") from err


def parse_control(text: str) -> End | Interrupt | Utterance:
    try:
        return _CONTROL.validate_json(text)
    except ValidationError as err:
        raise BadMessage(
            f"After `start` only audio and the messages `end`, `interrupt` and `utterance` are expected "
            f"({_describe(err)})."
        ) from err


def parse_lipsync(text: str) -> LipsyncRequest:
    try:
        return LipsyncRequest.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"Invalid request: {_describe(err)}") from err
