"""SadTalker: audio → 3DMM expression (and head pose) → keypoints → rendered 256² face.

The avatar part: the portrait's 3DMM semantics and keypoints (``avatar`` ensemble + ``mapping``), once per
portrait. A session: expression blocks (``motion``), pose windows (``mel`` + ``audio2pose`` in pose mode
``audio``) and render chunks (``render``/``render_enhanced``), scheduled by :class:`SadTalkerTimeline`; the face
goes back into SadTalker's crop box with a feathered edge.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.avatars.store import AvatarState
from gateway.errors import InferenceUnavailable
from gateway.media.pasteback import PasteBack
from gateway.session.options import SessionOptions
from gateway.session.timeline import MotionRequest, PoseRequest, RenderRequest, SadTalkerTimeline
from gateway.triton.client import TritonClient
from lipsync.timeline import source_semantics, source_window

NAME = "sadtalker"

# Audio a frame waits for beyond its own: the mapping window (13 frames) and the mel window of the last of
# them (≈ 92.5 ms + the 40 ms granularity of whole frames); in pose mode `audio` also the rest of a 32-frame
# pose window and 6 frames of smoothing.
LOOKAHEAD_MS = {"still": 13 * 40 + 92.5 + 40, "audio": (31 + 6 + 13) * 40 + 92.5 + 40}


@dataclass(frozen=True, eq=False)
class SadTalkerAvatar:
    """The portrait as SadTalker's renderer sees it."""

    source: np.ndarray  # (70,) semantics: exp 64 | angles 3 | translation 3
    kp_canonical: np.ndarray  # (1, 15, 3)
    kp_source: np.ndarray  # (1, 15, 3)

    def __post_init__(self) -> None:
        for array in (self.source, self.kp_canonical, self.kp_source):
            array.setflags(write=False)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.source, self.kp_canonical, self.kp_source))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"source": self.source, "kp_canonical": self.kp_canonical, "kp_source": self.kp_source}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SadTalkerAvatar:
        """ValueError unless the arrays have the shapes and dtypes ``prepare`` gives them (they go to Triton)."""
        for name, shape in (("source", (70,)), ("kp_canonical", (1, 15, 3)), ("kp_source", (1, 15, 3))):
            if arrays[name].shape != shape or arrays[name].dtype != np.float32:
                raise ValueError(f"SadTalker {name} of {arrays[name].dtype} {arrays[name].shape}, not float32 {shape}")
        return cls(arrays["source"].copy(), arrays["kp_canonical"].copy(), arrays["kp_source"].copy())


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


class SadTalker:
    name = NAME

    def __init__(self, motion_block: int = 4) -> None:
        self.motion_block = motion_block

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        render = "render_enhanced" if options.enhance else "render"
        return ("motion", render, *(("mel", "audio2pose") if options.pose == "audio" else ()))

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        if NAME in avatar.parts:
            return
        out = await triton.infer(
            "avatar", {"crop": _chw(avatar.crop), "aligned": _chw(avatar.aligned)}, ["coeffs", "kp_canonical"]
        )
        source = source_semantics(out["coeffs"][0])
        kp = await triton.infer(
            "mapping", {"window": source_window(source), "kp_canonical": out["kp_canonical"]}, ["kp_driving"]
        )
        avatar.add_part(NAME, SadTalkerAvatar(source, out["kp_canonical"], kp["kp_driving"]))

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> SadTalkerAvatar:
        return SadTalkerAvatar.from_arrays(arrays)

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> SadTalkerRun:
        return SadTalkerRun(avatar, options, triton, seed, self.motion_block)


class SadTalkerRun:
    def __init__(
        self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int, motion_block: int
    ) -> None:
        part = avatar.part(NAME, SadTalkerAvatar)
        self.part = part
        self.options = options
        self.triton = triton
        self.timeline = SadTalkerTimeline(
            part.source,
            options.pose,
            options.expression_scale,
            options.blink,
            seed,
            chunk_frames=options.chunk_frames,
            motion_block=motion_block,
            first_chunk_frames=options.first_chunk_frames,
        )
        framing = avatar.framings[options.framing]
        self.paste = PasteBack(framing.image, framing.box(avatar.box))
        self.lookahead_ms = LOOKAHEAD_MS[options.pose]
        self.audio_block = motion_block
        self._source_image = _chw(avatar.crop)

    def calls(self) -> list[Coroutine[Any, Any, None]]:
        motion = [self._motion(request) for request in self.timeline.motion_requests()]
        return motion + [self._pose(request) for request in self.timeline.pose_requests()]

    def render_requests(self) -> list[RenderRequest]:
        return self.timeline.render_requests()

    async def _motion(self, request: MotionRequest) -> None:
        out = await self.triton.infer(
            "motion",
            {
                "signal": request.span.signal,
                "mel_index": request.span.mel_index,
                "ref_exp": request.ref_exp,
                "ratio": request.ratio,
            },
            ["exp"],
        )
        self.timeline.set_exp(request, out["exp"])

    async def _pose(self, request: PoseRequest) -> None:
        mel = (await self.triton.infer("mel", {"signal": request.span.signal}, ["mel"]))["mel"][0]
        windows = mel[request.span.mel_index].transpose(0, 2, 1)[None, :, None]  # (1, 32, 1, 80, 16)
        out = await self.triton.infer(
            "audio2pose",
            {
                "mels": np.ascontiguousarray(windows),
                "z": request.z,
                "pose_style": np.array([[self.options.pose_style]], dtype=np.int64),  # (batch 1, 1)
                "ref_pose": self.part.source[None, 64:70],
            },
            ["motion"],
        )
        self.timeline.set_pose_motion(request, out["motion"][0])

    async def render(self, request: RenderRequest) -> np.ndarray:
        k = len(request.frames)
        model = "render_enhanced" if self.options.enhance else "render"
        out = await self.triton.infer(
            model,
            {
                "window": request.windows,
                "kp_canonical": np.repeat(self.part.kp_canonical, k, axis=0),
                "source_image": np.repeat(self._source_image, k, axis=0),
                "kp_source": np.repeat(self.part.kp_source, k, axis=0),
            },
            ["face"],
        )
        faces = out["face"]
        if faces.shape[0] != k:
            raise InferenceUnavailable(f"{model} answered {faces.shape[0]} faces for {k} frames")
        return faces
