"""SadTalker's audio front-end: 16 kHz speech → normalised log-mel frames → one 80×16 window per video frame.

Reproduces upstream ``src/utils/audio.py`` (with the Wav2Lip hparams) and the window slicing of
``src/generate_batch.py`` (OpenTalker/SadTalker, Apache-2.0), without librosa:

1. pre-emphasis ``y[n] = x[n] − 0.97·x[n−1]`` (``scipy.signal.lfilter([1, −0.97], [1], x)``);
2. centre padding: 400 zeros on each side (librosa ≥ 0.10 ``stft(center=True)`` pads with zeros — the golden
   fixture rules out reflection);
3. STFT, n_fft 800, hop 200, periodic Hann window of 800; magnitude;
4. 80 Slaney mel bands (Slaney-normalised triangles) between 55 and 7600 Hz;
5. ``dB = 20·log10(max(1e-5, mel)) − 20`` and ``clip(8·(dB + 100)/100 − 4, −4, 4)``.

Steps 1–2 and the per-frame window slicing are torch-free and live in :mod:`lipsync.audio` (the gateway
uses them too); :class:`MelSpectrogram` is the ONNX-exportable part (steps 3–5: the STFT is a strided
conv1d with fixed windowed cos/sin kernels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lipsync.audio import (
    FMAX,
    FMIN,
    HOP,
    MAX_ABS_VALUE,
    MIN_LEVEL_DB,
    N_FFT,
    NUM_MELS,
    REF_LEVEL_DB,
    SAMPLE_RATE,
    WIN,
    centre_pad,
    check_wav,
    padded_signal,
    preemphasis,
)


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


def log_mel(wav: np.ndarray, *, crop_to_frames: bool = True) -> np.ndarray:
    """Whole-clip log-mel ``(T_mel, 80)`` exactly as upstream's ``melspectrogram(wav).T``: SadTalker's after its
    crop to whole video frames (``T_mel = 1 + 3.2·frames``), Wav2Lip's of all of it (``crop_to_frames=False``)."""
    global _MODULE
    if _MODULE is None:
        _MODULE = MelSpectrogram().eval()
    padded = padded_signal(wav) if crop_to_frames else centre_pad(preemphasis(check_wav(wav)))
    with torch.no_grad():
        out = _MODULE(torch.from_numpy(padded)[None])
    return out[0].numpy()
