"""Decode any audio file FFmpeg reads (WAV, MP3, OGG, WebM, …) to 16 kHz mono float32, with PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from lipsync.audio import SAMPLE_RATE


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode; the message says what was wrong."""


def decode_audio(source: bytes | Path, *, max_seconds: float | None = None) -> np.ndarray:
    """All of the first audio stream, resampled to 16 kHz mono float32 in [-1, 1].

    ``max_seconds`` stops decoding early and raises: a limit must not need the whole file in memory first.
    """
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
    except (av.error.FFmpegError, OSError) as err:
        # FFmpeg's own wording ("Invalid data found when processing input") stays in the chain, for logs.
        raise AudioDecodeError("it is not an audio file in a format we read (WAV, MP3, OGG, WebM, …)") from err
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if max_seconds is not None and total > max_seconds * SAMPLE_RATE:
                    raise AudioDecodeError(f"the audio is longer than the limit of {max_seconds:g} s")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:
            raise AudioDecodeError("the audio stream is damaged part-way through") from err
    if not pieces:
        raise AudioDecodeError("the audio stream is empty")
    wav = np.concatenate(pieces).astype(np.float32)
    # Float WAVs can carry NaN or infinity; they would poison every frame's mel window.
    bad = int(np.count_nonzero(~np.isfinite(wav)))
    if bad:
        raise AudioDecodeError(f"{bad:,} of its samples are not numbers (NaN or infinity)")
    return wav
