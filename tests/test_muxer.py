"""The fMP4 muxer, with real codecs: what we write is read back by FFmpeg's mov demuxer (PyAV) and ffprobe.

The boxes are also parsed here by a small reader written independently of the writer, so sample flags, data
offsets and decode times are checked as bytes, not only through FFmpeg (whose H.264 parser re-derives key
flags from the bitstream and would hide a wrong trun flag).
"""

from __future__ import annotations

import io
import itertools
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.media.muxer import (
    AAC_FRAME_SAMPLES,
    AUDIO_TRACK_ID,
    VIDEO_TIMESCALE,
    VIDEO_TRACK_ID,
    FragmentedMp4Writer,
    annexb_to_length_prefixed,
    length_prefixed_nal_types,
    mux_to_mp4,
    split_annexb,
)

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
NAL_IDR = 5
SYNC_FLAGS = 0x0200_0000
NON_SYNC_BIT = 0x0001_0000


# --- an independent ISO-BMFF reader ---------------------------------------------------------------------------


def read_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each box in ``data``; asserts the sizes tile the buffer exactly."""
    boxes = []
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8 and pos + size <= len(data), f"bad box {kind!r} of size {size} at {pos}"
        boxes.append((kind, data[pos + 8 : pos + size]))
        pos += size
    return boxes


def child(payload: bytes, kind: bytes) -> bytes:
    found = [p for k, p in read_boxes(payload) if k == kind]
    assert len(found) == 1, f"expected one {kind!r}, found {len(found)}"
    return found[0]


@dataclass
class TrackRun:
    track_id: int
    base_time: int
    durations: list[int] = field(default_factory=list)
    flags: list[int | None] = field(default_factory=list)
    samples: list[bytes] = field(default_factory=list)


@dataclass
class Fragment:
    sequence: int
    runs: dict[int, TrackRun]


def parse_fragment(fragment: bytes) -> Fragment:
    (moof_kind, moof), (mdat_kind, _) = read_boxes(fragment)
    assert (moof_kind, mdat_kind) == (b"moof", b"mdat")
    (sequence,) = struct.unpack_from(">I", child(moof, b"mfhd"), 4)
    runs = {}
    for kind, traf in read_boxes(moof):
        if kind != b"traf":
            continue
        tfhd = child(traf, b"tfhd")
        tfhd_flags, track_id = struct.unpack_from(">II", tfhd)
        assert tfhd_flags & 0xFFFFFF == 0x020000, "default-base-is-moof only"
        tfdt = child(traf, b"tfdt")
        assert tfdt[0] == 1
        (base_time,) = struct.unpack_from(">Q", tfdt, 4)
        trun = child(traf, b"trun")
        trun_flags = struct.unpack_from(">I", trun)[0] & 0xFFFFFF
        count, data_offset = struct.unpack_from(">Ii", trun, 4)
        assert trun_flags & 0x1 and trun_flags & 0x100 and trun_flags & 0x200
        run = TrackRun(track_id, base_time)
        pos, offset = 12, data_offset  # data offsets count from the first byte of the moof
        for _ in range(count):
            duration, size = struct.unpack_from(">II", trun, pos)
            pos += 8
            flags = None
            if trun_flags & 0x400:
                (flags,) = struct.unpack_from(">I", trun, pos)
                pos += 4
            run.durations.append(duration)
            run.flags.append(flags)
            run.samples.append(fragment[offset : offset + size])
            offset += size
        assert pos == len(trun)
        runs[track_id] = run
    return Fragment(sequence, runs)


# --- inputs ---------------------------------------------------------------------------------------------------


def moving_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """Smooth content (gradients and a drifting soft blob), easy to code well, different in every frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        cx = width * (0.3 + 0.4 * i / max(count, 1))
        blob = np.exp(-((xx - cx) ** 2 + (yy - height / 2) ** 2) / (2 * (min(width, height) / 5) ** 2))
        r = 40 + 150 * xx / width
        g = 40 + 150 * yy / height
        b = 60 + 160 * blob
        frames.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return frames


def speech_like(samples: int, seed: int = 0) -> np.ndarray:
    """A few tones with slow random amplitude changes: no strong self-similarity at AAC-frame lags."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16_000
    envelope = np.interp(t, np.linspace(0, t[-1] + 1e-3, 12), rng.uniform(0.2, 1.0, 12))
    signal = sum(
        np.sin(2 * np.pi * f * t + p) for f, p in zip((230, 570, 1230, 2110), rng.uniform(0, 6, 4), strict=True)
    )
    return (envelope * signal * 6000).astype(np.int16)


@dataclass
class Stream:
    writer: FragmentedMp4Writer
    init: bytes
    fragments: list[bytes]  # one per write_chunk, then finish()'s (if not empty)
    chunk_starts: list[int]
    frames: list[np.ndarray]
    audio: np.ndarray

    @property
    def file(self) -> bytes:
        return self.init + b"".join(self.fragments)


def encode_stream(width: int, height: int, n_frames: int, chunk: int, tail: int = 300, **options: int) -> Stream:
    frames = moving_frames(width, height, n_frames)
    audio = speech_like(n_frames * SAMPLES_PER_FRAME + tail)
    writer = FragmentedMp4Writer(width, height, **options)  # type: ignore[arg-type]
    init = writer.init_segment()
    fragments, starts = [], []
    for start in range(0, n_frames, chunk):
        end = min(start + chunk, n_frames)
        starts.append(start)
        fragments.append(
            writer.write_chunk(frames[start:end], audio[start * SAMPLES_PER_FRAME : end * SAMPLES_PER_FRAME])
        )
    last = writer.finish(audio[n_frames * SAMPLES_PER_FRAME :])
    if last:
        fragments.append(last)
    assert writer.init_segment() == init, "the init segment must not change while streaming"
    return Stream(writer, init, fragments, starts, frames, audio)


def demux(data: bytes, kind: str) -> list[av.Packet]:
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [p for p in container.demux(stream) if p.size]


def pts(packet: av.Packet) -> int:
    assert packet.pts is not None
    return packet.pts


def end(packet: av.Packet) -> int:
    assert packet.pts is not None and packet.duration is not None
    return packet.pts + packet.duration


def decode_video(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), mode="r") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decode_audio(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r") as container:
        chunks = [f.to_ndarray()[0] for f in container.decode(audio=0)]
    return np.concatenate(chunks)


# --- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 8, 16])
def test_stream_demuxes_with_ffmpeg(chunk: int) -> None:
    n_frames = 33  # not a multiple of 4, 8 or 16: the last chunk is short
    s = encode_stream(64, 48, n_frames, chunk)

    video = demux(s.file, "video")
    assert len(video) == n_frames
    assert len(decode_video(s.file)) == n_frames
    audio = demux(s.file, "audio")
    for packets in (video, audio):
        decode_times = [p.dts or 0 for p in packets]
        assert None not in [p.dts for p in packets]
        presentation_times = [pts(p) for p in packets]
        assert all(b > a for a, b in itertools.pairwise(decode_times)), decode_times
        assert all(b > a for a, b in itertools.pairwise(presentation_times)), presentation_times
    assert [pts(p) for p in video] == [i * VIDEO_TIMESCALE // 25 for i in range(n_frames)]

    # Audio: the edit list hides the priming, so the presented audio ends exactly where the input does, and
    # the decoder gives the input length rounded up to whole AAC frames (less than one frame more).
    n_samples = len(s.audio)
    assert end(audio[-1]) == n_samples
    decoded = decode_audio(s.file)
    assert 0 <= len(decoded) - n_samples < AAC_FRAME_SAMPLES

    # Every chunk's fragment starts with an IDR frame: our trun flags, the NAL type in the mdat, and FFmpeg's view.
    by_pts = {pts(p): p for p in video}
    for start, fragment in zip(s.chunk_starts, s.fragments, strict=False):
        run = parse_fragment(fragment).runs[VIDEO_TRACK_ID]
        assert run.base_time == start * VIDEO_TIMESCALE // 25
        assert run.flags[0] == SYNC_FLAGS
        assert NAL_IDR in length_prefixed_nal_types(run.samples[0])
        first = by_pts[run.base_time]
        assert first.is_keyframe
        assert NAL_IDR in length_prefixed_nal_types(bytes(first))
        for flags, sample in zip(run.flags, run.samples, strict=True):  # flags agree with the bitstream
            assert flags is not None
            assert (flags == SYNC_FLAGS) == (NAL_IDR in length_prefixed_nal_types(sample))
            assert (flags & NON_SYNC_BIT == 0) == (flags == SYNC_FLAGS)


@pytest.mark.parametrize("chunk", [1, 8])
def test_fragments_are_numbered_and_contiguous(chunk: int) -> None:
    s = encode_stream(64, 48, 20, chunk)
    parsed = [parse_fragment(f) for f in s.fragments]
    assert [f.sequence for f in parsed] == list(range(1, len(parsed) + 1))
    video_time = audio_time = 0
    for fragment in parsed:
        assert fragment.runs, "a fragment without samples"
        if VIDEO_TRACK_ID in fragment.runs:
            run = fragment.runs[VIDEO_TRACK_ID]
            assert run.base_time == video_time
            video_time += sum(run.durations)
        if AUDIO_TRACK_ID in fragment.runs:
            run = fragment.runs[AUDIO_TRACK_ID]
            assert run.base_time == audio_time
            assert run.flags == [None] * len(run.durations)  # trex default: every AAC frame is a sync sample
            audio_time += sum(run.durations)
    assert video_time == 20 * VIDEO_TIMESCALE // 25
    assert audio_time == len(s.audio) + 1024  # the input plus the encoder's priming, which the edit list skips
    # Interleaving: by the time a chunk's fragment is out, audio is at most ~2 AAC frames behind its video.
    audio_end = 0
    for start, fragment in zip(s.chunk_starts, parsed, strict=False):
        if AUDIO_TRACK_ID in fragment.runs:
            audio_end = fragment.runs[AUDIO_TRACK_ID].base_time + sum(fragment.runs[AUDIO_TRACK_ID].durations)
        video_end_samples = min(start + chunk, 20) * SAMPLES_PER_FRAME + 1024
        assert video_end_samples - audio_end <= 3 * AAC_FRAME_SAMPLES


def test_audio_is_aligned_with_the_input() -> None:
    """Cross-correlation peaks at lag 0: the priming is trimmed, not played as a 64 ms delay."""
    s = encode_stream(64, 48, 50, 8)
    decoded = decode_audio(s.file)[: len(s.audio)]
    reference = s.audio.astype(np.float32) / 32768
    n = len(reference)
    spectrum = np.fft.rfft(decoded, 2 * n) * np.conj(np.fft.rfft(reference, 2 * n))
    correlation = np.fft.irfft(spectrum)
    lags = np.concatenate([np.arange(n), np.arange(-n, 0)])
    assert lags[np.argmax(correlation)] == 0
    error = np.abs(decoded - reference).mean() / np.abs(reference).mean()
    assert error < 0.2, f"decoded audio differs from the input by {error:.0%}"


def test_decoded_frames_look_like_the_input() -> None:
    s = encode_stream(128, 96, 12, 4)
    decoded = decode_video(s.file)
    assert len(decoded) == len(s.frames)
    for ours, theirs in zip(s.frames, decoded, strict=True):
        assert theirs.shape == ours.shape
        assert np.abs(theirs.astype(int) - ours).mean() < 3.0


def test_colours_keep_their_channels() -> None:
    """Pure red, green and blue bars come back in the same place: RGB order and the BT.709 round trip."""
    frame = np.zeros((64, 96, 3), np.uint8)
    bars = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, colour in enumerate(bars):
        frame[:, 32 * i : 32 * (i + 1)] = colour
    audio = np.zeros(2 * SAMPLES_PER_FRAME, np.int16)
    [decoded, _] = decode_video(mux_to_mp4([frame, frame], audio))
    for i, colour in enumerate(bars):
        centre = decoded[16:48, 32 * i + 8 : 32 * i + 24].reshape(-1, 3).mean(0)
        assert np.abs(centre - colour).max() < 8, (colour, centre)
    with av.open(io.BytesIO(mux_to_mp4([frame], audio[:SAMPLES_PER_FRAME])), mode="r") as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_range) == (1, 1)  # BT.709, limited range, read from the SPS


@pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe not installed (Debian's ffmpeg; .ci/run installs it)"
)
def test_ffprobe_reads_the_stream_without_errors(tmp_path: Path) -> None:
    s = encode_stream(64, 48, 21, 8)
    path = tmp_path / "stream.mp4"
    path.write_bytes(s.file)
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_packets", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert result.stdout.count("codec_type=video") == 21 + 1  # 21 packets and the stream
    assert "codec_name=h264" in result.stdout
    assert "codec_name=aac" in result.stdout


@pytest.mark.parametrize("profile", ["baseline", "main"])
def test_codec_string_matches_the_sps(profile: str) -> None:
    writer = FragmentedMp4Writer(1280, 720, profile=profile)  # type: ignore[arg-type]
    moov = child(writer.init_segment(), b"moov")
    traks = [p for k, p in read_boxes(moov) if k == b"trak"]
    stsd = child(child(child(child(traks[0], b"mdia"), b"minf"), b"stbl"), b"stsd")
    avcc = child(stsd[16 + 78 :], b"avcC")  # skip stsd's header, the avc1 box header and its 78 fixed bytes
    sps_length = struct.unpack_from(">H", avcc, 6)[0]
    sps = avcc[8 : 8 + sps_length]
    assert sps[0] & 0x1F == 7
    assert writer.codec_string == f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}, mp4a.40.2"
    assert writer.mime_type == f'video/mp4; codecs="{writer.codec_string}"'
    assert avcc[1:4] == sps[1:4]

    # FFmpeg's own reading of the stream agrees: profile and level.
    frames = moving_frames(1280, 720, 1)
    data = writer.init_segment() + writer.write_chunk(frames, np.zeros(SAMPLES_PER_FRAME, np.int16))
    with av.open(io.BytesIO(data), mode="r") as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.profile == {"baseline": "Constrained Baseline", "main": "Main"}[profile]
        assert sps[1] == {"baseline": 66, "main": 77}[profile]
        assert sps[3] == ctx.level


def test_odd_frame_size_is_padded_by_one_pixel() -> None:
    s = encode_stream(65, 49, 9, 4)
    assert (s.writer.coded_width, s.writer.coded_height) == (66, 50)
    decoded = decode_video(s.file)
    assert len(decoded) == 9
    for ours, theirs in zip(s.frames, decoded, strict=True):
        assert theirs.shape == (50, 66, 3)
        assert np.abs(theirs[:49, :65].astype(int) - ours).mean() < 3.0
        # the extra column and row repeat the last ones
        assert np.abs(theirs[:49, 65].astype(int) - ours[:, 64]).mean() < 6.0
        assert np.abs(theirs[49, :65].astype(int) - ours[48]).mean() < 6.0


def test_a_single_frame_stream() -> None:
    s = encode_stream(32, 32, 1, 1, tail=0)
    assert len(demux(s.file, "video")) == 1
    audio = demux(s.file, "audio")
    assert end(audio[-1]) == SAMPLES_PER_FRAME
    # 640 samples are less than one AAC frame: the first fragment has video only, finish() brings the audio
    first, last = (parse_fragment(f) for f in s.fragments)
    assert set(first.runs) == {VIDEO_TRACK_ID}
    assert set(last.runs) == {AUDIO_TRACK_ID}


def test_mux_to_mp4_gives_a_playable_file() -> None:
    frames = moving_frames(64, 48, 30)
    audio = speech_like(30 * SAMPLES_PER_FRAME + 100)
    data = mux_to_mp4(frames, audio)
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.duration is not None
        assert abs(container.duration / 1e6 - 1.2) < 0.1  # from the mehd box
    assert len(decode_video(data)) == 30
    keyframes = [pts(p) for p in demux(data, "video") if p.is_keyframe]
    assert keyframes[:2] == [0, 25 * VIDEO_TIMESCALE // 25]  # a fragment, and so an IDR, every second
    with pytest.raises(ValueError, match=r"expected 19200 to 19839"):
        mux_to_mp4(frames, audio[:1000])


def test_wrong_inputs_raise_with_the_expected_values() -> None:
    writer = FragmentedMp4Writer(32, 32)
    frames = moving_frames(32, 32, 4)
    with pytest.raises(ValueError, match=r"2559 samples; expected exactly 2560 samples"):
        writer.write_chunk(frames, np.zeros(2559, np.int16))
    with pytest.raises(ValueError, match=r"int16"):
        writer.write_chunk(frames, np.zeros(2560, np.float32))
    with pytest.raises(
        ValueError, match=r"frame 2 is uint8 of shape \(32, 30, 3\); expected uint8 of shape \(32, 32, 3\)"
    ):
        writer.write_chunk([*frames[:2], np.zeros((32, 30, 3), np.uint8)], np.zeros(3 * 640, np.int16))
    with pytest.raises(ValueError, match="at least one frame"):
        writer.write_chunk([], np.zeros(0, np.int16))
    with pytest.raises(ValueError, match=r"expected fewer than 640"):
        writer.finish(np.zeros(640, np.int16))
    # Refusals change nothing: the stream made afterwards is whole and starts at frame 0.
    data = writer.init_segment() + writer.write_chunk(frames, np.zeros(2560, np.int16)) + writer.finish()
    assert [pts(p) for p in demux(data, "video")] == [i * VIDEO_TIMESCALE // 25 for i in range(4)]
    with pytest.raises(RuntimeError, match="after finish"):
        writer.write_chunk(frames, np.zeros(2560, np.int16))
    with pytest.raises(ValueError, match="fps"):
        FragmentedMp4Writer(32, 32, fps=7)


def test_annexb_to_length_prefixed() -> None:
    stream = b"\x00\x00\x00\x01\x67\xaa\xbb" + b"\x00\x00\x01\x68\xcc\x00" + b"\x00\x00\x00\x01\x65\x01\x02\x03"
    assert split_annexb(stream) == [b"\x67\xaa\xbb", b"\x68\xcc", b"\x65\x01\x02\x03"]
    converted = annexb_to_length_prefixed(stream)
    assert converted == b"\x00\x00\x00\x03\x67\xaa\xbb\x00\x00\x00\x02\x68\xcc\x00\x00\x00\x04\x65\x01\x02\x03"
    assert length_prefixed_nal_types(converted) == [7, 8, 5]
