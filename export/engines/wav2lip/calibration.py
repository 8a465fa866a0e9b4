"""Calibration inputs for Wav2Lip's int8 graph (export/quantize.py): synthetic by default, or from real speech
and real faces, built as a session builds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.calibration import smooth_images, synthetic_voice


def synthetic_inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Mel windows of a synthetic voice through the real front-end, and masked faces of smooth colour fields."""
    from export.mel import log_mel
    from lipsync.wav2lip import face_input, wav2lip_mel_windows

    rng = np.random.default_rng(seed)
    mel = log_mel(synthetic_voice(rows / 25 + 0.5, seed), crop_to_frames=False)
    windows = wav2lip_mel_windows(mel, rows)  # (rows, 1, 80, 16)
    faces_bgr = np.rint(smooth_images(rows, 96, rng).transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    return {"mel_window": windows, "face": face_input(faces_bgr)}


def media_inputs(audio: Path, faces: np.ndarray, rows: int) -> dict[str, np.ndarray]:
    """The mel windows of ``rows`` frames spread over the recording, each with one of the faces in turn (the
    face inputs of ``python -m gateway.engines.wav2lip.calibration``)."""
    if len(faces) == 0:
        raise ValueError("give at least one face to calibrate with")
    from export.mel import log_mel
    from lipsync.audio import num_video_frames
    from lipsync.audio_io import decode_audio
    from lipsync.wav2lip import wav2lip_mel_windows

    wav = decode_audio(Path(audio))
    frames = num_video_frames(wav.size)
    if frames < 1:
        raise ValueError(f"{audio} is too short to calibrate with")
    windows = wav2lip_mel_windows(log_mel(wav, crop_to_frames=False), frames)
    chosen = np.unique(np.linspace(0, frames - 1, min(rows, frames)).round().astype(int))
    face_rows = faces[np.arange(chosen.size) % len(faces)]
    return {"mel_window": windows[chosen], "face": face_rows}
