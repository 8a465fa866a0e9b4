"""SadTalker's session options: head pose, expression strength, pose style, blinks."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from gateway.engines.page import Control
from gateway.session.options import EngineOptions, Mode


class SadTalkerOptions(EngineOptions):
    label: ClassVar[str] = "SadTalker — the whole face moves"

    engine: Literal["sadtalker"] = "sadtalker"
    # The portrait's pose, or one predicted from the audio.
    pose: Annotated[
        Literal["still", "audio"],
        Control(choices={"still": "Still (lowest delay)", "audio": "Moves with the audio"}),
    ] = Field("still", title="Head pose", description="Moving: ≈ 1.5 s more delay")
    expression_scale: Annotated[float, Control(step=0.1)] = Field(1.0, ge=0.0, le=3.0, title="Expression scale")
    pose_style: int = Field(0, ge=0, le=45, title="Pose style")
    blink: Annotated[bool, Control(more=True)] = Field(True, title="Blink")

    def mode_problem(self, mode: Mode) -> str | None:
        # A pose from the audio needs 2 s of look-ahead (its 32-frame windows and smoothing): no conversation.
        if mode == "conversation" and self.pose != "still":
            return "conversation mode keeps the head still (options.pose `still`)"
        return None
