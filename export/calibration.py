"""Synthetic calibration material for int8 graphs (export/quantize.py): a voice-like signal and face-like images.
Each engine's int8 form builds its model's inputs from them."""

from __future__ import annotations

import numpy as np

from lipsync.audio import SAMPLE_RATE


def synthetic_voice(seconds: float, seed: int) -> np.ndarray:
    """A voiced, vowel-like signal: a glottal pulse train at a wandering pitch through moving formants."""
    rng = np.random.default_rng(seed)
    n = int(SAMPLE_RATE * seconds)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    wav = np.zeros(n)
    for formant, width in ((700, 0.8), (1200, 0.5), (2600, 0.25)):
        moving = formant * (1 + 0.25 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        harmonic = np.clip(np.round(moving / pitch), 1, None)
        wav += width * np.sin(harmonic * phase)
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6.3))  # ≈ 4 syllables a second
    wav = wav * syllables + 0.01 * rng.standard_normal(n)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def smooth_images(rows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, 3, size, size) in [0, 1]: low-frequency colour fields, closer to a face's statistics than noise."""
    import torch

    coarse = torch.from_numpy(rng.random((rows, 3, 6, 6), dtype=np.float32))
    fields = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()
    detail = 0.05 * rng.standard_normal((rows, 3, size, size)).astype(np.float32)
    return np.clip(0.2 + 0.6 * fields + detail, 0.0, 1.0)
