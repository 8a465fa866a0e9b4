"""SadTalker's audio front-end: 16 kHz speech → normalised log-mel frames → one 80×16 window per video frame.

Reproduces upstream ``src/utils/audio.py`` (with the Wav2Lip hparams) and the window slicing of
``src/generate_batch.py`` (OpenTalker/SadTalker, Apache-2.0), without librosa:

1. pre-emphasis ``y[n] = x[n] − 0.97·x[n−1]`` (``scipy.signal.lfilter([1, −0.97], [1], x)``);
2. centre padding: 400 zeros on each side (librosa ≥ 0.10 ``stft(center=True)`` pads with zeros — the golden
   fixture rules out reflection);
3. STFT, n_fft 800, hop 200, periodic Hann window of 800; magnitude;
4. 80 Slaney mel bands (Slaney-normalised triangles) between 55 and 7600 Hz;
5. ``dB = 20·log10(max(1e-5, mel)) − 20`` and ``clip(8·(dB + 100)/100 − 4, −4, 4)``.

The numpy functions at the top never call torch; :class:`MelSpectrogram` is the ONNX-exportable part
(steps 3–5: the STFT is a strided conv1d with fixed windowed cos/sin kernels).

Streaming. Mel frame ``t`` reads the padded signal ``[200·t, 200·t + 800)`` and nothing else, so a run of
mel frames can be computed from a slice of the pre-emphasised, padded signal
(:func:`signal_span_for_mel_frames`) and equals the same frames of the whole-clip run. Pre-emphasis needs
only the previous sample (``preemphasis(chunk, previous=...)``). The only dependence on the end of the clip
is upstream's crop to whole video frames and the 400 zeros after it, which move with the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

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


# --------------------------------------------------------------------------- numpy (torch-free) part


def _check_wav(wav: np.ndarray, name: str = "wav") -> np.ndarray:
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
    wav = _check_wav(wav)
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
    offset = np.arange(num_frames, dtype=np.int64) - 2
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


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic (6.4× per 27 mel) above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3.0)
    log_part = 1000.0 * np.exp((math.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank() -> np.ndarray:
    """The (80, 401) Slaney filterbank that ``librosa.filters.mel(sr=16000, n_fft=800, n_mels=80,
    fmin=55, fmax=7600)`` returns (float32, as librosa's default dtype)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(FMIN)), _hz_to_mel(np.array(FMAX)), NUM_MELS + 2))
    widths = np.diff(edges)
    to_edge = edges[:, None] - fft_hz[None, :]
    rising = -to_edge[:-2] / widths[:-1, None]
    falling = to_edge[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per band (norm="slaney")
    return weights.astype(np.float32)


def _stft_kernels() -> np.ndarray:
    """Windowed DFT basis (2·401, 1, 800): rows 0…400 give the real part, 401…801 the imaginary part."""
    n = np.arange(N_FFT, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN)  # periodic Hann (scipy get_window, fftbins=True)
    k = np.arange(N_FFT // 2 + 1, dtype=np.float64)[:, None]
    angle = 2.0 * np.pi * ((k * n[None, :]) % N_FFT) / N_FFT  # reduce k·n mod N first for accurate angles
    real = np.cos(angle) * window
    imag = -np.sin(angle) * window
    return np.concatenate([real, imag], axis=0)[:, None, :].astype(np.float32)


# --------------------------------------------------------------------------- torch part


class MelSpectrogram(nn.Module):
    """Normalised log-mel of a pre-emphasised, centre-padded signal; ONNX-exportable (conv1d STFT).

    forward(signal (B, S)) → (B, T, 80) with T = (S − 800)//200 + 1, S ≥ 800.
    """

    stft_kernels: torch.Tensor
    mel_basis: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_kernels", torch.from_numpy(_stft_kernels()), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()), persistent=False)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        if signal.dim() != 2:
            raise ValueError(f"signal must be (batch, samples), got shape {tuple(signal.shape)}")
        spectrum = nn.functional.conv1d(signal.unsqueeze(1), self.stft_kernels, stride=HOP)  # (B, 802, T)
        bins = N_FFT // 2 + 1
        real, imag = spectrum[:, :bins], spectrum[:, bins:]
        magnitude = torch.sqrt(real * real + imag * imag)
        mel = torch.matmul(self.mel_basis, magnitude)  # (B, 80, T)
        min_level = math.exp(MIN_LEVEL_DB / 20.0 * math.log(10.0))
        db = 20.0 * torch.log10(torch.clamp(mel, min=min_level)) - REF_LEVEL_DB
        normalised = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
        return torch.clamp(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).transpose(1, 2)


_MODULE: MelSpectrogram | None = None


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Whole-clip log-mel ``(T_mel, 80)`` exactly as upstream's ``melspectrogram(wav).T`` after its crop to
    whole video frames (``T_mel = 1 + 3.2·frames``)."""
    global _MODULE
    if _MODULE is None:
        _MODULE = MelSpectrogram().eval()
    padded = padded_signal(wav)
    with torch.no_grad():
        out = _MODULE(torch.from_numpy(padded)[None])
    return out[0].numpy()
