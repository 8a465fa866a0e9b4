"""Wav2Lip's session options: where its face box is, and how its face is blended back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from gateway.engines.page import Control
from gateway.session.options import EngineOptions, SessionOptions

DEFAULT_PADS = (0, 10, 0, 0)  # the face box's padding [top, bottom, left, right], upstream's default
Pad = Annotated[int, Field(ge=0, le=1000)]


class Wav2LipOptions(EngineOptions):
    label: ClassVar[str] = "Wav2Lip — lips only (non-commercial)"

    engine: Literal["wav2lip"] = "wav2lip"
    # Face box padding in photo pixels [top, bottom, left, right], and how the face is blended in.
    pads: tuple[Pad, Pad, Pad, Pad] = DEFAULT_PADS
    # The lower face through a mask, or the whole box.
    blend: Annotated[
        Literal["lower_face", "box"],
        Control(choices={"lower_face": "Lower face only (seamless)", "box": "The whole face box"}),
    ] = Field("lower_face", title="Blend the new mouth")

    @classmethod
    def for_lipsync_request(cls, request: Mapping[str, Any]) -> SessionOptions:
        """Upstream's inference options, each honoured (the request's model validated them)."""
        options = cls(
            enhance=not request.get("no_sr", True),
            pads=request.get("pads", DEFAULT_PADS),
            blend="box" if request.get("no_segmentation", False) else "lower_face",
        )
        # Upstream's batch size is the frames per model call, up to 128: more than a streaming chunk may be.
        return SessionOptions(options, chunk_frames_override=request.get("batch_size"))
