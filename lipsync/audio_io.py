"""Decode an audio file (WAV, MP3, OGG, WebM, MP4/M4A, FLAC, AAC) to 16 kHz mono float32, with PyAV.

Bytes (an upload) are opened with the one FFmpeg demuxer their leading bytes name, from a short list of audio
containers, and with no other: FFmpeg's own probing would also hand them to playlist and script demuxers
(ffconcat, HLS, …) that open whatever local files or URLs the text names. A path (the operator's own file,
offline tools) is probed as FFmpeg does, so those tools read any format FFmpeg reads.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from lipsync.audio import SAMPLE_RATE

# The formats the docs promise (docs/protocol.md) and the page's file picker offers (web/index.html), in words.
ACCEPTED_FORMATS = "WAV, MP3, OGG (Vorbis or Opus), WebM or Matroska, MP4 or M4A, FLAC, or AAC (ADTS)"
# Demuxer options per container. The MOV/MP4 demuxer can follow a file's data references to other files;
# FFmpeg leaves that off by default, and it is kept off here whatever the default becomes.
_DEMUXER_OPTIONS = {"mov": {"enable_drefs": "0"}}
# Each demuxer's container in words, for messages.
_CONTAINER_WORDS = {
    "wav": "WAV",
    "ogg": "OGG",
    "matroska": "WebM/Matroska",
    "mov": "MP4/M4A",
    "flac": "FLAC",
    "mp3": "MP3",
    "aac": "AAC",
}


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode; the message says what was wrong."""


def _id3v2_length(data: bytes) -> int:
    """Bytes of the ID3v2 tag at the start of ``data`` (header, body, footer), or 0 if there is none."""
    if len(data) < 10 or data[:3] != b"ID3" or any(byte & 0x80 for byte in data[6:10]):
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]  # "syncsafe": 7 bits a byte
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _mpeg_audio_frame(head: bytes) -> str | None:
    """``aac`` for an ADTS header, ``mp3`` for an MPEG audio (layer I–III) frame header, else None."""
    if len(head) < 4 or head[0] != 0xFF:
        return None
    if head[1] & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS
        return "aac"
    version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0b11
    if head[1] & 0xE0 == 0xE0 and version != 0b01 and layer != 0 and bitrate != 0xF and rate != 0b11:
        return "mp3"
    return None


def sniff_container(data: bytes) -> str | None:
    """The FFmpeg demuxer for ``data`` by its leading bytes, if it is one of the accepted containers."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM
        return "matroska"
    if head[4:8] == b"ftyp":  # ISO base media: MP4, M4A, MOV
        return "mov"
    if head[:4] == b"fLaC":
        return "flac"
    # ID3v2 tags (one or more) may precede MP3, AAC or FLAC; FFmpeg skips them before the demuxer reads.
    offset = 0
    while length := _id3v2_length(data[offset : offset + 10]):
        offset += length
    if offset and data[offset : offset + 4] == b"fLaC":
        return "flac"
    return _mpeg_audio_frame(data[offset : offset + 4])


def _open(source: bytes | Path) -> av.container.InputContainer:
    if not isinstance(source, bytes):
        return av.open(str(source), mode="r")
    demuxer = sniff_container(source)
    if demuxer is None:
        raise AudioDecodeError(f"it is not an audio file in a format we accept ({ACCEPTED_FORMATS})")
    try:
        return av.open(io.BytesIO(source), mode="r", format=demuxer, options=_DEMUXER_OPTIONS.get(demuxer, {}))
    except (av.error.FFmpegError, OSError) as err:
        # FFmpeg's own wording ("Invalid data found when processing input") stays in the chain, for logs.
        words = _CONTAINER_WORDS[demuxer]
        raise AudioDecodeError(
            f"it is not an audio file we can read: it begins as {words} does, but FFmpeg cannot read it as {words}"
        ) from err


def decode_audio(source: bytes | Path, *, max_seconds: float | None = None) -> np.ndarray:
    """All of the first audio stream, resampled to 16 kHz mono float32 in [-1, 1].

    ``max_seconds`` stops decoding early and raises: a limit must not need the whole file in memory first.
    """
    try:
        container = _open(source)
    except (av.error.FFmpegError, OSError) as err:  # a path: FFmpeg probed every format it has
        raise AudioDecodeError(f"it is not an audio file FFmpeg reads ({err})") from err
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
