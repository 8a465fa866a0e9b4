"""Live PCM decoding: pieces of any size, other sample rates resampled to 16 kHz; audio files of any format."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from gateway.errors import UnsupportedAudio
from gateway.media.audio_input import PcmDecoder, to_int16
from lipsync.audio_io import AudioDecodeError, decode_audio


def _tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def test_16k_pcm_in_odd_sized_pieces_is_exact() -> None:
    pcm = _tone(16000, 0.5)
    data = pcm.tobytes()
    decoder = PcmDecoder(16000)
    pieces = [decoder.decode(data[i : i + 333]) for i in range(0, len(data), 333)]  # odd sizes split samples
    decoded = np.concatenate([*pieces, decoder.flush()])
    np.testing.assert_array_equal(to_int16(decoded), pcm)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_other_rates_are_resampled_to_16k(rate: int) -> None:
    pcm = _tone(rate, 1.0)
    decoder = PcmDecoder(rate)
    data = pcm.tobytes()
    decoded = np.concatenate(
        [*(decoder.decode(data[i : i + 4410]) for i in range(0, len(data), 4410)), decoder.flush()]
    )
    assert abs(decoded.size - 16000) <= 64  # one second stays one second
    assert abs(_dominant_hz(decoded, 16000) - 440.0) < 2.0
    assert 0.4 < np.abs(decoded[2000:-2000]).max() < 0.6  # level kept


def test_unsupported_rate_is_refused_in_words() -> None:
    with pytest.raises(UnsupportedAudio, match="sample_rate 1000 Hz is not supported"):
        PcmDecoder(1000)


def test_audio_files_decode_to_16k_mono() -> None:
    buffer = io.BytesIO()
    stereo = np.stack([_tone(22050, 0.5), _tone(22050, 0.5)], axis=1)
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        wav.writeframes(stereo.tobytes())
    decoded = decode_audio(buffer.getvalue())
    assert decoded.dtype == np.float32 and abs(decoded.size - 8000) <= 64
    assert abs(_dominant_hz(decoded, 16000) - 440.0) < 3.0
    with pytest.raises(AudioDecodeError, match="not an audio file"):
        decode_audio(b"RIFF....WAVEnonsense" * 20)
    with pytest.raises(AudioDecodeError, match=r"longer than the limit of 0\.1 s"):
        decode_audio(buffer.getvalue(), max_seconds=0.1)
