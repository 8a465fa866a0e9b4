"""SadTalker's session options: head pose, expression strength, pose style, blinks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.session.options import EngineOptions, Mode


class SadTalkerOptions(EngineOptions):
    engine: Literal["sadtalker"] = "sadtalker"
    pose: Literal["still", "audio"] = "still"  # the portrait's pose, or one predicted from the audio
    expression_scale: float = Field(1.0, ge=0.0, le=3.0)
    pose_style: int = Field(0, ge=0, le=45)
    blink: bool = True

    def mode_problem(self, mode: Mode) -> str | None:
        # A pose from the audio needs 2 s of look-ahead (its 32-frame windows and smoothing): no conversation.
        if mode == "conversation" and self.pose != "still":
            return "conversation mode keeps the head still (options.pose `still`)"
        return None
