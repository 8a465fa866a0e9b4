"""The Wav2Lip engine's inputs, torch-free: which mel frames each video frame reads, and the masked face.

Upstream Rudrabha/Wav2Lip ``inference.py`` (non-commercial licence). The mel spectrogram is the same as
SadTalker's (``lipsync.audio``; Wav2Lip's ``audio.py`` and ``hparams.py`` define it, SadTalker copied them):
80 mel frames per second, 25 video frames per second. Video frame ``i`` reads the 16 mel frames from
``int(80·i/25)`` — no look-back, unlike SadTalker's ``int(80·(i − 2)/25)`` — and a window that would run past
the end of the clip is moved back to end on the last mel frame (upstream's tail window at ``T − 16``). The
network (``export.models.wav2lip``, served as the ``wav2lip`` model) takes ``(N, 1, 80, 16)`` windows and the
``(N, 6, 96, 96)`` face input built by :func:`face_input`.

Upstream renders one frame per window start that fits (``start + 16 ≤ T``) plus one tail window
(:func:`wav2lip_upstream_num_frames`), and reads the mel with ``mel[:, start : start + 16]`` on a mel of shape
``(80, T)``; here the mel is ``(T, 80)`` as :func:`lipsync.audio.mel_windows` uses it.
"""

from __future__ import annotations

import numpy as np

from lipsync.audio import FPS, MEL_FRAMES_PER_SECOND, MEL_STEPS, NUM_MELS

FACE_SIZE = 96  # the network's face crop, pixels per side
MASK_FROM_ROW = FACE_SIZE // 2  # rows ≥ 48 (the lower half) are zeroed in the masked copy


def _check_mel_frames(num_mel_frames: int) -> None:
    if num_mel_frames < MEL_STEPS:
        raise ValueError(
            f"Wav2Lip needs at least {MEL_STEPS} mel frames (0.2 s of audio) for one window, got {num_mel_frames}"
        )


def wav2lip_window_starts(num_frames: int, num_mel_frames: int) -> np.ndarray:
    """First mel frame of each video frame's 16-frame window: ``min(int(80·i/25), T − 16)``, int64.

    Exact integer arithmetic (``80·i // 25``), equal to upstream's float ``int(i · 80./fps)`` at 25 fps. Frames
    past the end of the audio (``i`` beyond :func:`wav2lip_upstream_num_frames`) all read the tail window.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be ≥ 0, got {num_frames}")
    _check_mel_frames(num_mel_frames)
    starts = MEL_FRAMES_PER_SECOND * np.arange(num_frames, dtype=np.int64) // FPS
    return np.minimum(starts, num_mel_frames - MEL_STEPS)


def wav2lip_mel_window_indices(num_frames: int, num_mel_frames: int) -> np.ndarray:
    """Mel frame indices ``(num_frames, 16)`` int64 of each video frame's window (all within ``0 … T − 1``).

    The ``index`` input of the ``mel_windows`` ensemble step has this form.
    """
    starts = wav2lip_window_starts(num_frames, num_mel_frames)
    return starts[:, None] + np.arange(MEL_STEPS, dtype=np.int64)[None, :]


def wav2lip_mel_windows(mel: np.ndarray, num_frames: int) -> np.ndarray:
    """The network's ``mel_window`` input ``(num_frames, 1, 80, 16)`` float32 from a log-mel ``(T, 80)``."""
    if not isinstance(mel, np.ndarray) or mel.ndim != 2 or mel.shape[1] != NUM_MELS:
        raise ValueError(f"mel must be (T_mel, {NUM_MELS}), got {getattr(mel, 'shape', type(mel).__name__)}")
    if not np.isfinite(mel).all():
        raise ValueError("mel has non-finite values")
    indices = wav2lip_mel_window_indices(num_frames, mel.shape[0])
    return np.ascontiguousarray(mel[indices].transpose(0, 2, 1)[:, None], dtype=np.float32)


def wav2lip_upstream_num_frames(num_mel_frames: int) -> int:
    """How many frames upstream renders from ``T`` mel frames: every start ``int(80·i/25)`` with
    ``start + 16 ≤ T``, then one tail window."""
    _check_mel_frames(num_mel_frames)
    last_start = num_mel_frames - MEL_STEPS
    # Starts that fit: i with 80·i // 25 ≤ last_start, i.e. i ≤ (25·last_start + 24) // 80.
    return (FPS * last_start + FPS - 1) // MEL_FRAMES_PER_SECOND + 2


def face_input(faces_bgr: np.ndarray) -> np.ndarray:
    """The network's ``face`` input ``(N, 6, 96, 96)`` float32 from face crops ``(N, 96, 96, 3)`` BGR uint8.

    Channels 0-2: the crop with rows ≥ 48 zeroed (the mouth region the network fills in); channels 3-5: the
    crop itself (the pose and identity reference; for a still portrait, the same crop). Values ``x/255``,
    computed in float64 and cast to float32, as upstream does.
    """
    if not isinstance(faces_bgr, np.ndarray) or faces_bgr.dtype != np.uint8:
        raise ValueError(
            f"faces must be a uint8 numpy array, got {getattr(faces_bgr, 'dtype', type(faces_bgr).__name__)}"
        )
    if faces_bgr.ndim != 4 or faces_bgr.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(f"faces must be (N, {FACE_SIZE}, {FACE_SIZE}, 3) BGR, got {faces_bgr.shape}")
    masked = faces_bgr.copy()
    masked[:, MASK_FROM_ROW:] = 0
    stacked = np.concatenate([masked, faces_bgr], axis=3) / 255.0
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32)
