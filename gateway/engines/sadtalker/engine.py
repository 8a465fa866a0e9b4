"""SadTalker as an engine: audio → 3DMM expression (and head pose) → keypoints → rendered 256² face.

The avatar part: its crop of the portrait (:mod:`gateway.engines.sadtalker.crop`, from the full-resolution photo
at upload), then the portrait's 3DMM semantics and keypoints (``avatar`` ensemble + ``mapping``), once per
portrait. A session: expression blocks (``motion``), pose windows (``mel`` + ``audio2pose`` in pose mode
``audio``) and render chunks (``render``/``render_enhanced``), scheduled by :class:`SadTalkerTimeline`; the face
goes back into SadTalker's crop box with a feathered edge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.engines.base import same_picture
from gateway.engines.sadtalker.crop import CROP_SIZE, RECON_SIZE, SadTalkerCrop, sadtalker_crop
from gateway.engines.sadtalker.options import SadTalkerOptions
from gateway.engines.sadtalker.timeline import MotionRequest, PoseRequest, SadTalkerTimeline
from gateway.errors import InferenceUnavailable
from gateway.media.pasteback import PasteBack
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.triton.client import TritonClient
from lipsync.timeline import source_semantics, source_window

log = logging.getLogger(__name__)

NAME = "sadtalker"

# Audio a frame waits for beyond its own: the mapping window (13 frames) and the mel window of the last of
# them (≈ 92.5 ms + the 40 ms granularity of whole frames); in pose mode `audio` also the rest of a 32-frame
# pose window and 6 frames of smoothing.
LOOKAHEAD_MS = {"still": 13 * 40 + 92.5 + 40, "audio": (31 + 6 + 13) * 40 + 92.5 + 40}


@dataclass(frozen=True, eq=False)
class SadTalkerCoefficients:
    """The portrait as SadTalker's renderer sees it (from Triton, once)."""

    source: np.ndarray  # (70,) semantics: exp 64 | angles 3 | translation 3
    kp_canonical: np.ndarray  # (1, 15, 3)
    kp_source: np.ndarray  # (1, 15, 3)

    def __post_init__(self) -> None:
        for array in (self.source, self.kp_canonical, self.kp_source):
            array.setflags(write=False)


_IMAGES: dict[str, tuple[int, ...]] = {"crop": (CROP_SIZE, CROP_SIZE, 3), "aligned": (RECON_SIZE, RECON_SIZE, 3)}
_COEFFICIENTS: dict[str, tuple[int, ...]] = {"source": (70,), "kp_canonical": (1, 15, 3), "kp_source": (1, 15, 3)}


@dataclass(frozen=True, eq=False)
class SadTalkerAvatar:
    """SadTalker's part of an avatar record: its crop, and once prepared the renderer's view of it."""

    crop: SadTalkerCrop
    coefficients: SadTalkerCoefficients | None = None

    @property
    def nbytes(self) -> int:
        arrays = [self.crop.crop, self.crop.aligned]
        if self.coefficients is not None:
            arrays += [self.coefficients.source, self.coefficients.kp_canonical, self.coefficients.kp_source]
        return sum(int(a.nbytes) for a in arrays)

    def prepared(self) -> SadTalkerCoefficients:
        if self.coefficients is None:
            raise RuntimeError("SadTalker's avatar part is not prepared (Engine.prepare)")
        return self.coefficients

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"crop": self.crop.crop, "aligned": self.crop.aligned, "align_params": self.crop.align_params}
        if self.coefficients is not None:
            c = self.coefficients
            arrays |= {"source": c.source, "kp_canonical": c.kp_canonical, "kp_source": c.kp_source}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SadTalkerAvatar:
        """ValueError unless the arrays have the shapes and dtypes ``prepare`` gives them (they go to Triton)."""
        for name, shape in _IMAGES.items():
            if arrays[name].shape != shape or arrays[name].dtype != np.uint8:
                raise ValueError(f"SadTalker {name} of {arrays[name].dtype} {arrays[name].shape}, not uint8 {shape}")
        params = arrays["align_params"]
        if params.shape != (5,) or params.dtype != np.float64 or not np.isfinite(params).all():
            raise ValueError(f"SadTalker align_params of {params.dtype} {params.shape}, not 5 finite float64")
        crop = SadTalkerCrop(arrays["crop"].copy(), arrays["aligned"].copy(), params.copy())
        present = [name for name in _COEFFICIENTS if name in arrays]
        if not present:
            return cls(crop)
        for name, shape in _COEFFICIENTS.items():
            if name not in arrays:
                raise ValueError(f"SadTalker coefficients without {name}")
            if arrays[name].shape != shape or arrays[name].dtype != np.float32:
                raise ValueError(f"SadTalker {name} of {arrays[name].dtype} {arrays[name].shape}, not float32 {shape}")
        coefficients = SadTalkerCoefficients(*(arrays[name].copy() for name in _COEFFICIENTS))
        return cls(crop, coefficients)


def crop_from_framing(avatar: AvatarState) -> SadTalkerCrop:
    """SadTalker's crop from the record's ``portrait`` framing, for an avatar made while this engine was not
    served (the photo is gone by then): the same crop when the photo fits the framing's size, else cut from its
    downscaled copy."""
    framing = avatar.framings["portrait"]
    return sadtalker_crop(framing.image, framing.box(avatar.box), framing.points(avatar.landmarks))


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


class SadTalker:
    name = NAME
    options_model = SadTalkerOptions
    int8_models: tuple[str, ...] = ()  # none of its models has an int8 form (export/quantize.py)

    def __init__(self, audio_block: int = 4) -> None:
        self.motion_block = audio_block

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        render = "render_enhanced" if options.enhance else "render"
        pose = options.of(SadTalkerOptions).pose
        return ("motion", render, *(("mel", "audio2pose") if pose == "audio" else ()))

    def portrait_part(self, portrait: Portrait) -> SadTalkerAvatar:
        return SadTalkerAvatar(sadtalker_crop(portrait.image, portrait.box, portrait.landmarks))

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        part = avatar.parts.get(NAME)
        if isinstance(part, SadTalkerAvatar) and part.coefficients is not None:
            return
        if not isinstance(part, SadTalkerAvatar):
            log.info("avatar %s: SadTalker's crop from its portrait framing", avatar.id[:12])
            part = SadTalkerAvatar(await asyncio.to_thread(crop_from_framing, avatar))
        crop = part.crop
        out = await triton.infer(
            "avatar", {"crop": _chw(crop.crop), "aligned": _chw(crop.aligned)}, ["coeffs", "kp_canonical"]
        )
        source = source_semantics(out["coeffs"][0])
        kp = await triton.infer(
            "mapping", {"window": source_window(source), "kp_canonical": out["kp_canonical"]}, ["kp_driving"]
        )
        avatar.add_part(
            NAME, SadTalkerAvatar(crop, SadTalkerCoefficients(source, out["kp_canonical"], kp["kp_driving"]))
        )

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> SadTalkerAvatar:
        return SadTalkerAvatar.from_arrays(arrays)

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> SadTalkerRun:
        return SadTalkerRun(avatar, options, triton, seed, self.motion_block)


class SadTalkerRun:
    def __init__(
        self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int, motion_block: int
    ) -> None:
        part = avatar.part(NAME, SadTalkerAvatar)
        self.part = part.prepared()
        self.options = options
        self.sadtalker = sadtalker = options.of(SadTalkerOptions)
        self.triton = triton
        self.timeline = SadTalkerTimeline(
            self.part.source,
            sadtalker.pose,
            sadtalker.expression_scale,
            sadtalker.blink,
            seed,
            chunk_frames=options.chunk_frames,
            motion_block=motion_block,
            first_chunk_frames=options.first_chunk_frames,
        )
        framing = avatar.framings[options.framing]
        self.paste = same_picture(PasteBack(framing.image, framing.box(avatar.box)))
        self.lookahead_ms = LOOKAHEAD_MS[sadtalker.pose]
        self.audio_block = motion_block
        self._source_image = _chw(part.crop.crop)

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
                "pose_style": np.array([[self.sadtalker.pose_style]], dtype=np.int64),  # (batch 1, 1)
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
