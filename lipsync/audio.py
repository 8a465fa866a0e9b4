"""Audio framing shared by the offline pipeline and the streaming gateway (numpy only, torch-free).

SadTalker's front-end (upstream ``src/utils/audio.py`` and ``src/generate_batch.py``, OpenTalker/SadTalker,
Apache-2.0): 16 kHz mono, 25 video frames per second (640 samples each), pre-emphasis 0.97, a centred STFT
(n_fft 800, hop 200, zero padding) giving 80 mel frames per second, and for video frame ``i`` the 16 mel frames
from ``int(80·(i − 2)/25)``, each index clamped to the clip. The mel itself is computed by
``export.mel.MelSpectrogram`` (served as the ``mel`` model); this module says which samples and frames go where.

Streaming. Mel frame ``t`` reads the padded signal ``[200·t, 200·t + 800)`` and nothing else, so a run of
mel frames can be computed from a slice of the pre-emphasised, padded signal
(:func:`signal_span_for_mel_frames`). Pre-emphasis needs only the previous sample
(``preemphasis(chunk, previous=...)``). The only dependence on the end of the clip is upstream's crop to whole
video frames and the 400 zeros after it, which move with the end.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_VIDEO_FRAME = SAMPLE_RATE // FPS  # 640
PREEMPHASIS = 0.97
N_FFT = 800
HOP = 200
WIN = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_STEPS = 16  # mel frames per video-frame window (syncnet_mel_step_size)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP  # 80
PAD = N_FFT // 2  # centre padding on each side


def check_wav(wav: np.ndarray, name: str = "wav") -> np.ndarray:
    """Validate a mono float waveform at the edge: 1-D, float32/float64, finite, at least one video frame."""
    if not isinstance(wav, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(wav).__name__}")
    if wav.ndim != 1:
        raise ValueError(f"{name} must be 1-D mono samples, got shape {wav.shape}")
    if wav.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{name} must be float32 or float64 samples in [-1, 1], got dtype {wav.dtype} "
            "(convert int16 PCM with x / 32768 first)"
        )
    if wav.shape[0] < SAMPLES_PER_VIDEO_FRAME:
        raise ValueError(
            f"{name} has {wav.shape[0]} samples; at least one video frame ({SAMPLES_PER_VIDEO_FRAME} samples "
            f"at {SAMPLE_RATE} Hz) is needed"
        )
    bad = ~np.isfinite(wav)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{name} has {int(bad.sum())} non-finite samples (first at index {first}: {wav[first]})")
    return wav


def num_video_frames(num_samples: int) -> int:
    """Video frames upstream makes from ``num_samples`` at 16 kHz / 25 fps: ``floor(samples / 640)``."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be ≥ 0, got {num_samples}")
    return num_samples // SAMPLES_PER_VIDEO_FRAME


def num_mel_frames(num_samples: int) -> int:
    """Mel frames of a centre-padded STFT of ``num_samples`` samples: ``1 + samples // 200``."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be ≥ 0, got {num_samples}")
    return 1 + num_samples // HOP


def preemphasis(x: np.ndarray, previous: float = 0.0) -> np.ndarray:
    """``y[n] = x[n] − 0.97·x[n−1]`` in float64, with ``x[−1] = previous`` (0 at the start of a clip).

    Passing the last sample of the previous chunk as ``previous`` makes chunked pre-emphasis equal the
    whole-clip one.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise ValueError(f"preemphasis expects 1-D samples, got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"preemphasis expects float32/float64 samples, got dtype {x.dtype}")
    x64 = x.astype(np.float64)
    y = x64.copy()
    y[0] -= PREEMPHASIS * float(previous)
    y[1:] -= PREEMPHASIS * x64[:-1]
    return y


def centre_pad(emphasised: np.ndarray) -> np.ndarray:
    """The STFT input as librosa builds it with ``center=True``: 400 zeros on each side, as float32."""
    return np.pad(emphasised, (PAD, PAD), mode="constant").astype(np.float32)


def padded_signal(wav: np.ndarray) -> np.ndarray:
    """Crop to whole video frames (as upstream does), pre-emphasise, centre-pad: the input of MelSpectrogram."""
    wav = check_wav(wav)
    cropped = wav[: num_video_frames(wav.shape[0]) * SAMPLES_PER_VIDEO_FRAME]
    return centre_pad(preemphasis(cropped))


def signal_span_for_mel_frames(first: int, count: int) -> tuple[int, int]:
    """Sample span ``[start, stop)`` of the padded signal that mel frames ``first … first+count−1`` read."""
    if first < 0 or count < 1:
        raise ValueError(f"need first ≥ 0 and count ≥ 1, got first={first}, count={count}")
    return first * HOP, (first + count - 1) * HOP + N_FFT


def mel_window_starts(num_frames: int) -> np.ndarray:
    """First mel frame of each video frame's window, before clamping: ``int(80·(i − 2)/25)``.

    ``int()`` truncates towards zero (frame 0 → −6, frame 1 → −3), computed here in exact integer
    arithmetic (it equals upstream's float expression for every frame index below 2·10⁶, checked).
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be ≥ 0, got {num_frames}")
    return mel_window_starts_of(np.arange(num_frames, dtype=np.int64))


def mel_window_starts_of(frames: np.ndarray) -> np.ndarray:
    """:func:`mel_window_starts` of the given frame indices only (a stream's frames are far from 0)."""
    offset = np.asarray(frames, dtype=np.int64) - 2
    magnitude = (MEL_FRAMES_PER_SECOND * np.abs(offset)) // FPS
    return np.sign(offset) * magnitude


def mel_window_indices(num_frames: int, num_mel_frames: int) -> np.ndarray:
    """Mel frame indices ``(num_frames, 16)`` of each video frame's window.

    Upstream clamps every index separately to ``[0, num_mel_frames − 1]`` (not the start), so windows at
    the clip's edges repeat the first or last mel frame.
    """
    if num_mel_frames < 1:
        raise ValueError(f"num_mel_frames must be ≥ 1, got {num_mel_frames}")
    starts = mel_window_starts(num_frames)
    indices = starts[:, None] + np.arange(MEL_STEPS, dtype=np.int64)[None, :]
    return np.clip(indices, 0, num_mel_frames - 1)


def mel_windows(mel: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-video-frame windows ``(num_frames, 80, 16)`` from a log-mel ``(T_mel, 80)``."""
    if not isinstance(mel, np.ndarray) or mel.ndim != 2 or mel.shape[1] != NUM_MELS:
        raise ValueError(f"mel must be (T_mel, {NUM_MELS}), got {getattr(mel, 'shape', type(mel).__name__)}")
    if mel.shape[0] < 1:
        raise ValueError("mel has no frames")
    if not np.isfinite(mel).all():
        raise ValueError("mel has non-finite values")
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    indices = mel_window_indices(num_frames, mel.shape[0])
    return np.ascontiguousarray(mel[indices].transpose(0, 2, 1))
