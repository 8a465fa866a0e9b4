"""Live PCM from the browser → 16 kHz mono float32, resampled with PyAV when it arrives at another rate."""

from __future__ import annotations

import av
import numpy as np

from gateway.errors import UnsupportedAudio
from lipsync.audio import SAMPLE_RATE

MIN_RATE, MAX_RATE = 8_000, 192_000


class PcmDecoder:
    """Little-endian int16 mono PCM in pieces of any size (an odd byte waits for its partner)."""

    def __init__(self, sample_rate: int) -> None:
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise UnsupportedAudio(f"sample_rate {sample_rate} Hz is not supported ({MIN_RATE}–{MAX_RATE} Hz)")
        self.sample_rate = sample_rate
        self._odd = b""
        self._resampler = (
            None if sample_rate == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )
        self._pts = 0

    def decode(self, data: bytes) -> np.ndarray:
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        pcm = np.frombuffer(data[:whole], dtype="<i2")
        if self._resampler is None:
            return pcm.astype(np.float32) / 32768.0
        if pcm.size == 0:
            return np.zeros(0, np.float32)
        return self._resample(pcm)

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._collect(self._resampler.resample(None))

    def _resample(self, pcm: np.ndarray) -> np.ndarray:
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += pcm.size
        assert self._resampler is not None
        return self._collect(self._resampler.resample(frame))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] → int16 (exact inverse of x / 32768 for PCM that came in as int16)."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)
