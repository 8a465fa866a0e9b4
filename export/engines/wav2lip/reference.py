"""Wav2Lip's offline PyTorch pipeline: a portrait's face input + audio → 96² faces, with upstream's inference
semantics.

This is the ground truth that the Triton and streaming paths of the served engine are tested against: it runs
the whole clip at once, the way upstream does (``inference.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from export.engines.shared.reference import batches
from export.mel import log_mel
from export.stages import StageFactory
from lipsync.audio import MEL_STEPS, SAMPLE_RATE, check_wav, num_video_frames
from lipsync.wav2lip import FACE_SIZE, wav2lip_mel_windows


class Wav2LipReference:
    """Whole-clip Wav2Lip with the PyTorch modules of one variant: the ground truth of the served engine.

    Per frame i of N = floor(samples / 640): the 16 mel frames from min(int(80·i/25), T − 16) of the whole clip's
    log-mel (:mod:`lipsync.wav2lip`; clips under 16 mel frames repeat their last one), the portrait's face input,
    the network, and upstream's conversion to uint8 (truncated), as RGB.
    """

    def __init__(self, factory: StageFactory, batch_size: int = 16) -> None:
        self.factory = factory
        self.batch_size = batch_size

    def render(self, face_input: np.ndarray, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """All frames (N, 96, 96, 3) uint8 RGB for 16 kHz mono ``wav`` and ``face_input``: (1, 6, 96, 96) for a
        photo (every frame's), or (N, 6, 96, 96), each frame's own (a video avatar's)."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"audio must be {SAMPLE_RATE} Hz mono; got {sample_rate} Hz (resample it first)")
        check_wav(wav)
        num_frames = num_video_frames(wav.shape[0])
        if face_input.shape[1:] != (6, FACE_SIZE, FACE_SIZE) or face_input.shape[0] not in (1, num_frames):
            raise ValueError(
                f"face_input must be (1 or {num_frames}, 6, {FACE_SIZE}, {FACE_SIZE}), got {face_input.shape}"
            )
        per_frame = face_input if face_input.shape[0] == num_frames else np.repeat(face_input, num_frames, axis=0)
        mel = log_mel(wav, crop_to_frames=False)
        if mel.shape[0] < MEL_STEPS:
            mel = np.concatenate([mel, np.repeat(mel[-1:], MEL_STEPS - mel.shape[0], axis=0)])
        windows = wav2lip_mel_windows(mel, num_frames)
        network, to_uint8 = self.factory.build("wav2lip"), self.factory.build("wav2lip_to_uint8")
        faces = []
        with torch.no_grad():
            for f in batches(num_frames, self.batch_size):
                faces_in = torch.from_numpy(np.ascontiguousarray(per_frame[f]))
                faces.append(to_uint8(network(torch.from_numpy(windows[f]), faces_in)).numpy())
        return np.concatenate(faces)
