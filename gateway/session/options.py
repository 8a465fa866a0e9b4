"""What one session renders: the engine and its options, as the protocols' validated messages set them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngineName = Literal["sadtalker", "wav2lip"]
DEFAULT_PADS = (0, 10, 0, 0)  # Wav2Lip's face box padding [top, bottom, left, right], upstream's default


@dataclass(frozen=True)
class SessionOptions:
    engine: EngineName = "sadtalker"
    mode: Literal["clip", "conversation"] = "clip"
    enhance: bool = False  # GFPGAN on the rendered face
    seed: int | None = None
    chunk_frames: int = 8  # frames per fragment (and per render call)
    first_chunk_frames: int | None = None  # the first fragment's frames (fewer: a faster first frame)
    framing: Literal["portrait", "face"] = "portrait"
    # SadTalker
    pose: Literal["still", "audio"] = "still"
    expression_scale: float = 1.0
    pose_style: int = 0
    blink: bool = True
    # Wav2Lip
    pads: tuple[int, int, int, int] = DEFAULT_PADS
    blend: Literal["lower_face", "box"] = "lower_face"  # paste the lower face through a mask, or the whole box
