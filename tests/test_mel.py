"""The audio front-end: golden fidelity, an independent float64 formula, chunked = whole-clip, ONNX, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR
from scipy.signal import lfilter

from export import mel
from export.onnx import relative_error as rel_err
from lipsync import audio


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "mel.npz") as data:
        return {k: data[k] for k in data.files}


def test_golden_mel_and_windows(golden: dict[str, np.ndarray]) -> None:
    wav = golden["wav"]
    ours = mel.log_mel(wav)
    assert ours.shape == golden["mel"].shape == (audio.num_mel_frames(len(wav)), 80)
    assert rel_err(ours, golden["mel"]) <= 1e-5
    frames = audio.num_video_frames(len(wav))
    windows = audio.mel_windows(ours, frames)
    assert windows.shape == golden["windows"].shape
    assert rel_err(windows, golden["windows"]) <= 1e-5
    # Slicing alone (on the golden mel) must be exact.
    np.testing.assert_array_equal(audio.mel_windows(golden["mel"], frames), golden["windows"])


def test_window_indices_clamp_each_index() -> None:
    indices = audio.mel_window_indices(32, 103)
    assert list(audio.mel_window_starts(4)) == [-6, -3, 0, 3]
    assert list(indices[0]) == [0] * 7 + list(range(1, 10))  # start −6: the first mel frame repeats
    assert list(indices[1]) == [0] * 4 + list(range(1, 13))
    assert list(indices[31]) == list(range(92, 103)) + [102] * 5  # start 92: the last mel frame repeats
    assert audio.num_video_frames(20480) == 32
    assert audio.num_video_frames(20479) == 31


# --- an independent float64 implementation, written from the formula rather than from export/mel.py ---


def _slaney_mel(f: float) -> float:
    return f / (200.0 / 3.0) if f < 1000.0 else 15.0 + 27.0 * math.log(f / 1000.0) / math.log(6.4)


def _slaney_hz(m: float) -> float:
    return m * (200.0 / 3.0) if m < 15.0 else 1000.0 * 6.4 ** ((m - 15.0) / 27.0)


def _reference_filterbank() -> np.ndarray:
    lo, hi = _slaney_mel(55.0), _slaney_mel(7600.0)
    corners = [_slaney_hz(lo + (hi - lo) * j / 81.0) for j in range(82)]
    freqs = np.arange(401) * (16000.0 / 800.0)
    bank = np.zeros((80, 401))
    for band in range(80):
        left, centre, right = corners[band : band + 3]
        triangle = np.interp(freqs, [left, centre, right], [0.0, 1.0, 0.0], left=0.0, right=0.0)
        bank[band] = triangle * 2.0 / (right - left)
    return bank


def _reference_log_mel(wav: np.ndarray) -> np.ndarray:
    x = wav[: (len(wav) // 640) * 640].astype(np.float64)
    x = lfilter([1.0, -0.97], [1.0], x)
    x = np.concatenate([np.zeros(400), x, np.zeros(400)])
    count = 1 + (len(x) - 800) // 200
    frames = np.stack([x[200 * t : 200 * t + 800] for t in range(count)])
    window = np.hanning(801)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1))
    energy = power @ _reference_filterbank().T
    db = 20.0 * np.log10(np.maximum(energy, 1e-5)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def test_independent_float64_formula(golden: dict[str, np.ndarray]) -> None:
    reference = _reference_log_mel(golden["wav"].astype(np.float64))
    assert rel_err(golden["mel"], reference) <= 1e-5  # the formula is what upstream computes
    assert rel_err(mel.log_mel(golden["wav"]), reference) <= 1e-5
    np.testing.assert_allclose(mel.mel_filterbank(), _reference_filterbank(), rtol=1e-5, atol=1e-7)
    # A different signal (noise + tone, odd length): the crop to whole video frames and the edges.
    rng = np.random.default_rng(1)
    t = np.arange(16000 + 333) / 16000.0
    wav = (0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = mel.log_mel(wav)
    assert ours.shape == (1 + 25 * 640 // 200, 80)
    assert rel_err(ours, _reference_log_mel(wav)) <= 1e-5


def test_chunks_equal_whole_clip(golden: dict[str, np.ndarray]) -> None:
    wav = golden["wav"]
    whole = mel.log_mel(wav)
    # Pre-emphasis chunk by chunk (carrying the last sample) equals the whole-clip pre-emphasis.
    pieces = [wav[:1000], wav[1000:1640], wav[1640:]]
    chunked = np.concatenate(
        [audio.preemphasis(p, previous=float(pieces[i - 1][-1]) if i else 0.0) for i, p in enumerate(pieces)]
    )
    np.testing.assert_array_equal(chunked, audio.preemphasis(wav))
    padded = audio.centre_pad(chunked)
    module = mel.MelSpectrogram().eval()
    parts = []
    first = 0
    for count in (1, 7, 30, 65):
        start, stop = audio.signal_span_for_mel_frames(first, count)
        with torch.no_grad():
            part = module(torch.from_numpy(padded[start:stop])[None])[0].numpy()
        assert part.shape == (count, 80)
        parts.append(part)
        first += count
    assert first == whole.shape[0]
    # Equal up to float32 rounding: the conv's summation order depends on the input length (GEMM blocking),
    # which moves low-energy bins by a few ulps of the STFT sum; never a different frame or alignment.
    chunked_mel = np.concatenate(parts)
    assert rel_err(chunked_mel, whole) <= 1e-5
    np.testing.assert_allclose(chunked_mel, whole, rtol=0, atol=2e-4)


def test_onnx_export_dynamic_batch_and_time(tmp_path: Path, golden: dict[str, np.ndarray]) -> None:
    module = mel.MelSpectrogram().eval()
    example = torch.from_numpy(audio.padded_signal(golden["wav"]))[None]
    path = tmp_path / "mel.onnx"
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["signal"],
        output_names=["mel"],
        dynamic_axes={"signal": {0: "batch", 1: "samples"}, "mel": {0: "batch", 1: "frames"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, samples in ((1, example.shape[1]), (3, 6400 + 800)):
        signal = (0.2 * rng.standard_normal((batch, samples))).astype(np.float32)
        (onnx_out,) = session.run(["mel"], {"signal": signal})
        with torch.no_grad():
            torch_out = module(torch.from_numpy(signal)).numpy()
        assert onnx_out.shape == (batch, (samples - 800) // 200 + 1, 80)
        assert not np.isnan(onnx_out).any()
        assert rel_err(onnx_out, torch_out) <= 1e-4


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        (np.zeros(639, np.float32), "at least one video frame"),
        (np.array([0.0] * 700 + [np.nan], np.float32), "non-finite"),
        (np.array([np.inf] + [0.0] * 700, np.float64), "non-finite"),
        (np.zeros(1000, np.int16), "dtype int16"),
        (np.zeros((2, 1000), np.float32), "1-D"),
    ],
)
def test_bad_audio_is_rejected(wav: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mel.log_mel(wav)
    with pytest.raises(ValueError, match=message):
        audio.padded_signal(wav)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="T_mel, 80"):
        audio.mel_windows(np.zeros((10, 40), np.float32), 3)
    with pytest.raises(ValueError, match="non-finite"):
        audio.mel_windows(np.full((10, 80), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="first"):
        audio.signal_span_for_mel_frames(-1, 3)
    with pytest.raises(ValueError, match="1-D"):
        audio.preemphasis(np.zeros((2, 2), np.float32))
