"""Message schemas of the WebSocket protocols (docs/protocol.md), validated with pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import BadMessage
from gateway.session import SessionOptions

PROTOCOL_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioFormat(_Strict):
    format: Literal["pcm_s16le", "file"] = "pcm_s16le"
    sample_rate: int = Field(16_000, ge=8_000, le=192_000)
    channels: Literal[1] = 1


class Options(_Strict):
    pose: Literal["still", "audio"] = "still"
    enhance: bool = False
    expression_scale: float = Field(1.0, ge=0.0, le=3.0)
    pose_style: int = Field(0, ge=0, le=45)
    blink: bool = True
    seed: int | None = Field(None, ge=0, lt=2**31)
    chunk_frames: int = Field(8, ge=1, le=25)
    framing: Literal["portrait", "face"] = "portrait"

    def session_options(self) -> SessionOptions:
        return SessionOptions(**self.model_dump())


class Start(_Strict):
    type: Literal["start"]
    version: Literal[1] = 1
    avatar_id: str = Field(min_length=1, max_length=128)
    audio: AudioFormat = AudioFormat()
    options: Options = Options()


class End(_Strict):
    type: Literal["end"]


class LipsyncRequest(BaseModel):
    """The compatible one-shot request of ``/ws/lipsync``; fields other than audio and image are accepted."""

    model_config = ConfigDict(extra="allow")
    audio: str = Field(min_length=1)
    image: str = Field(min_length=1)
    fps: float | None = None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


def parse_start(text: str) -> Start:
    try:
        return Start.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"The first message must be a valid `start` message ({_describe(err)}).") from err


def parse_control(text: str) -> End:
    try:
        return End.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"After `start` only audio and an `end` message are expected ({_describe(err)}).") from err


def parse_lipsync(text: str) -> LipsyncRequest:
    try:
        request = LipsyncRequest.model_validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"Invalid request: {_describe(err)}") from err
    if request.fps is not None and request.fps != 25:
        raise BadMessage(f"fps must be 25 (this engine renders 25 frames per second), got {request.fps:g}")
    return request
