"""The offline PyTorch pipeline: avatar inputs + audio → video frames, with SadTalker's inference semantics.

This is the ground truth that the Triton and streaming paths are tested against: it runs the whole clip at
once, the way upstream does (``inference.py``: audio2coeff, then the face renderer), with the schedules of
:mod:`lipsync.timeline` where upstream's depend on the clip length.

Per frame i of N = floor(samples / 640):
1. mel window of frame i → Audio2Exp with the source expression and blink ratio i → exp_i;
2. pose: the source pose (``still``), or the source pose + Audio2Pose motion over 32-frame windows, smoothed
   (``audio``);
3. semantics_i = [exp_i · expression_scale | pose_i (| crop params in ``full`` mode)];
4. mapping of the 27-frame window around i (clamped) → driving keypoints; mapping of the source window →
   source keypoints; generator(source crop, source kp, driving kp) → frame i.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from export.engines.shared.reference import batches
from export.mel import log_mel
from export.stages import StageFactory
from lipsync.audio import SAMPLE_RATE, check_wav, mel_windows, num_video_frames
from lipsync.timeline import (
    NUM_POSE_STYLES,
    POSE_WINDOW,
    blink_ratios,
    mapping_windows,
    pose_latent,
    pose_windows,
    smooth_pose,
    source_semantics,
    source_window,
)

log = logging.getLogger(__name__)

PoseMode = Literal["still", "audio"]
# Upstream's `--preprocess`: `crop` (the face square) or `full` (the same crop, the semantics with its crop
# params and the `mapping_full` network; upstream then pastes into the photo). The gateway serves `crop` and
# pastes into its framings itself; `full` is kept here as upstream's reference for `mapping_full`.
Preprocess = Literal["crop", "full"]


@dataclass(frozen=True)
class Options:
    pose: PoseMode = "still"
    expression_scale: float = 1.0
    pose_style: int = 0
    blink: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pose not in ("still", "audio"):
            raise ValueError(f"pose must be 'still' or 'audio', got {self.pose!r}")
        if not 0 <= self.pose_style < NUM_POSE_STYLES:
            raise ValueError(f"pose_style must be in 0..{NUM_POSE_STYLES - 1}, got {self.pose_style}")
        if not np.isfinite(self.expression_scale):
            raise ValueError(f"expression_scale must be finite, got {self.expression_scale}")


@dataclass(frozen=True)
class AvatarInputs:
    """What the render path needs from a portrait (see ``gateway.engines.sadtalker.crop``)."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB, S = 256
    coeffs: np.ndarray  # (257,) face_recon output
    crop_params: np.ndarray | None = None  # (scale, tx, ty) of the 224² alignment; required in `full` mode
    mode: Preprocess = "crop"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] float NCHW → uint8 NHWC, clamped and rounded half to even (as skimage's img_as_ubyte)."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


class ReferencePipeline:
    """Whole-clip rendering with the PyTorch modules of one variant (official or reduced weights)."""

    def __init__(self, factory: StageFactory, batch_size: int = 8) -> None:
        self.factory = factory
        self.batch_size = batch_size
        self.size = 256

    def _run(self, stage: str, *inputs: np.ndarray) -> np.ndarray:
        module = self.factory.build(stage)
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
        return np.asarray(out.numpy())

    def _check(self, avatar: AvatarInputs, wav: np.ndarray, sample_rate: int) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"audio must be {SAMPLE_RATE} Hz mono; got {sample_rate} Hz (resample it first)")
        check_wav(wav)
        shape = (self.size, self.size, 3)
        if avatar.crop.shape != shape or avatar.crop.dtype != np.uint8:
            raise ValueError(f"the face crop must be {shape} uint8, got {avatar.crop.shape} {avatar.crop.dtype}")
        if avatar.coeffs.shape != (257,) or not np.isfinite(avatar.coeffs).all():
            raise ValueError(f"coeffs must be 257 finite values, got shape {avatar.coeffs.shape}")
        if avatar.mode == "full" and avatar.crop_params is None:
            raise ValueError("`full` mode needs the crop params (scale, tx, ty) of the alignment")

    def semantics(self, avatar: AvatarInputs, wav: np.ndarray, options: Options) -> np.ndarray:
        """(N, 70 or 73) per-frame coefficients: the input of the mapping windows."""
        num_frames = num_video_frames(wav.shape[0])
        windows = mel_windows(log_mel(wav), num_frames)[:, None]  # (N, 1, 80, 16)
        source = source_semantics(avatar.coeffs, avatar.crop_params if avatar.mode == "full" else None)
        ref_exp, ref_pose = source[:64], source[64:70]
        ratio = blink_ratios(0, num_frames, options.seed) if options.blink else np.zeros(num_frames, np.float32)

        exp = np.concatenate(
            [
                self._run("audio2exp", windows[f], np.repeat(ref_exp[None], len(f), 0), ratio[f, None])
                for f in batches(num_frames, self.batch_size)
            ]
        )
        pose = np.repeat(ref_pose[None], num_frames, axis=0)
        if options.pose == "audio":
            pose = smooth_pose(ref_pose[None] + self._pose_motion(windows, ref_pose, options))
        columns = [exp * np.float32(options.expression_scale), pose]
        if avatar.mode == "full":
            columns.append(np.repeat(source[None, 70:], num_frames, axis=0))
        return np.concatenate(columns, axis=1).astype(np.float32)

    def _pose_motion(self, windows: np.ndarray, ref_pose: np.ndarray, options: Options) -> np.ndarray:
        num_frames = windows.shape[0]
        motion = np.zeros((num_frames, 6), dtype=np.float32)  # frame 0 is the source pose
        for window in pose_windows(num_frames):
            frames = np.minimum(np.arange(window.start, window.start + POSE_WINDOW), num_frames - 1)
            out = self._run(
                "audio2pose",
                windows[frames][None],
                pose_latent(options.seed, window.number)[None],
                np.array([options.pose_style], dtype=np.int64),
                ref_pose[None],
            )[0]
            keep = np.array(window.keep)
            motion[keep] = out[keep - window.start]
        return motion

    def render(
        self, avatar: AvatarInputs, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, options: Options | None = None
    ) -> np.ndarray:
        """All frames (N, 256, 256, 3) uint8 for the audio ``wav`` (16 kHz mono float)."""
        options = options or Options()
        self._check(avatar, wav, sample_rate)
        semantics = self.semantics(avatar, wav, options)
        num_frames = semantics.shape[0]
        stage = "mapping_full" if avatar.mode == "full" else "mapping"
        source_image = (avatar.crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        kp_canonical = self._run("kp_detector", source_image)
        source = source_semantics(avatar.coeffs, avatar.crop_params if avatar.mode == "full" else None)
        kp_source = self._run(stage, source_window(source), kp_canonical)

        frames = []
        for f in batches(num_frames, self.batch_size):
            k = len(f)
            kp_driving = self._run(stage, mapping_windows(semantics, f, num_frames), np.repeat(kp_canonical, k, 0))
            prediction = self._run("generator", np.repeat(source_image, k, 0), np.repeat(kp_source, k, 0), kp_driving)
            frames.append(to_uint8(prediction))
        log.debug("rendered %d frames", num_frames)
        return np.concatenate(frames)
