"""Fragmented MP4 for the live stream: H.264 + AAC-LC, one fragment (moof + mdat) per chunk of frames.

PyAV encodes (libx264, FFmpeg's native AAC); the ISO-BMFF boxes are written here, because PyAV has no public
call to cut a fragment on demand. The box layout is described in docs/fmp4.md.

- Video: H.264 Constrained Baseline (or Main), no B-frames, ``tune=zerolatency`` so every frame put in comes
  out at once; the first frame of every chunk is forced to an IDR picture, so each fragment can be decoded on
  its own (a late joiner or a dropped fragment recovers at the next one). BT.709, limited range, signalled in
  the SPS. Odd frame sizes are padded to even by repeating the last row/column: the stream is one pixel wider
  or taller than the input, and no input pixel is lost.
- Audio: AAC-LC at the input rate (16 kHz mono: no resampling, 640 samples per video frame at 25 fps), one
  encoder for the whole stream. Its 1024 samples of priming are trimmed by an edit list in the init segment,
  so audio and video both start at time 0.
- ``init_segment()`` is available right after construction: the encoders are opened with global headers,
  so SPS/PPS (for avcC and the codec string) and the AudioSpecificConfig (for esds) exist before any frame.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.codec.context import Flags
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

logger = logging.getLogger(__name__)

VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2
VIDEO_TIMESCALE = 90_000
MOVIE_TIMESCALE = 1_000
AAC_FRAME_SAMPLES = 1024
# FFmpeg's AAC encoder sets initial_padding = 1024; PyAV does not expose the field, so the first packet's pts
# (−1024) is checked against this constant at run time.
AAC_PRIMING_SAMPLES = 1024

# Sample flags (ISO/IEC 14496-12 §8.8.3.1): sample_depends_on=2 → a sync sample; =1 plus is_non_sync → not.
SYNC_SAMPLE_FLAGS = 0x0200_0000
NON_SYNC_SAMPLE_FLAGS = 0x0101_0000

# tfhd / trun flag bits.
TFHD_DEFAULT_BASE_IS_MOOF = 0x02_0000
TRUN_DATA_OFFSET = 0x000001
TRUN_SAMPLE_DURATION = 0x000100
TRUN_SAMPLE_SIZE = 0x000200
TRUN_SAMPLE_FLAGS = 0x000400

# MPEG-4 audio sampling_frequency_index table (ISO/IEC 14496-3 Table 1.18).
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

BT709 = 1  # the ITU-T H.273 code for BT.709 colour primaries and transfer characteristics

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
_UNITY_MATRIX = struct.pack(">9I", 0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000)

Profile = Literal["baseline", "main"]


# --- ISO-BMFF box writing -------------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    """A box: 32-bit size, four-character type, payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """A full box: a box whose payload starts with version (8 bits) and flags (24 bits)."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# --- H.264 bitstream helpers ----------------------------------------------------------------------------------


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (start codes 00 00 01 or 00 00 00 01), without trailing zeros."""
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append((i, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    units = []
    for n, (_, begin) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(data)
        unit = data[begin:end].rstrip(b"\x00")  # drops trailing_zero_8bits and a 4-byte start code's first zero
        if unit:
            units.append(unit)
    return units


def annexb_to_length_prefixed(data: bytes) -> bytes:
    """Annex-B access unit → the MP4 form: each NAL unit behind a 4-byte big-endian length."""
    return b"".join(struct.pack(">I", len(unit)) + unit for unit in split_annexb(data))


def length_prefixed_nal_types(sample: bytes) -> list[int]:
    """nal_unit_type of every NAL unit in an MP4 (4-byte length-prefixed) H.264 sample."""
    types = []
    pos = 0
    while pos + 4 <= len(sample):
        (size,) = struct.unpack_from(">I", sample, pos)
        types.append(sample[pos + 4] & 0x1F)
        pos += 4 + size
    return types


def avc_codec_string(sps: bytes) -> str:
    """RFC 6381 codec string ``avc1.PPCCLL``: profile_idc, constraint flags, level_idc from the SPS."""
    return f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"


def avc_decoder_configuration(sps: bytes, pps: bytes) -> bytes:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) for one SPS and one PPS, 4-byte lengths."""
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFC | 3, 0xE0 | 1])
        + struct.pack(">H", len(sps))
        + sps
        + bytes([1])
        + struct.pack(">H", len(pps))
        + pps
    )


def _descriptor(tag: int, payload: bytes) -> bytes:
    if len(payload) > 127:
        raise ValueError(f"descriptor {tag} of {len(payload)} bytes needs a multi-byte length")
    return bytes([tag, len(payload)]) + payload


def esds_payload(audio_specific_config: bytes, avg_bitrate: int) -> bytes:
    """ES_Descriptor (ISO/IEC 14496-1 §7.2.6.5) carrying AAC's AudioSpecificConfig."""
    decoder_config = _descriptor(
        0x04,
        bytes([0x40, (0x05 << 2) | 1])  # objectTypeIndication: MPEG-4 audio; streamType: audio, reserved bit
        + (0).to_bytes(3, "big")  # bufferSizeDB
        + struct.pack(">II", avg_bitrate, avg_bitrate)
        + _descriptor(0x05, audio_specific_config),
    )
    return _descriptor(0x03, struct.pack(">HB", 0, 0) + decoder_config + _descriptor(0x06, b"\x02"))


# --- the writer -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One coded sample ready for a trun: MP4-form bytes, duration in the track's timescale, sync or not."""

    data: bytes
    duration: int
    sync: bool


class FragmentedMp4Writer:
    """Encodes chunks of RGB frames + int16 mono audio into an init segment and one media segment per chunk.

    Synchronous and not thread-safe: one writer per stream, called from one worker thread at a time.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        fps: int = 25,
        sample_rate: int = 16_000,
        audio_bitrate: int = 48_000,
        crf: int = 23,
        video_bitrate: int | None = None,
        preset: str = "veryfast",
        profile: Profile = "baseline",
        threads: int = 0,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if fps < 1 or VIDEO_TIMESCALE % fps:
            raise ValueError(f"fps must be a whole number dividing {VIDEO_TIMESCALE}, got {fps}")
        if sample_rate not in AAC_SAMPLE_RATES or sample_rate % fps:
            raise ValueError(
                f"sample_rate {sample_rate} must be an AAC rate ({AAC_SAMPLE_RATES}) and a multiple of fps {fps}"
            )
        if profile not in ("baseline", "main"):
            raise ValueError(f"profile must be 'baseline' or 'main', got {profile!r}")
        self.width = width  # the input frame size
        self.height = height
        self.coded_width = width + (width & 1)  # the size in the stream (even: 4:2:0 chroma needs pairs)
        self.coded_height = height + (height & 1)
        self.fps = fps
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // fps
        self.audio_bitrate = audio_bitrate

        self._video = self._open_video(crf, video_bitrate, preset, profile, threads)
        self._audio = self._open_audio(audio_bitrate)
        self._reformatter = VideoReformatter()  # keeps its swscale context between frames

        units = split_annexb(bytes(self._video.extradata or b""))
        sps = [u for u in units if u[0] & 0x1F == NAL_SPS]
        pps = [u for u in units if u[0] & 0x1F == NAL_PPS]
        if len(sps) != 1 or len(pps) != 1:
            raise RuntimeError(f"expected one SPS and one PPS in libx264's global header, got {len(sps)}/{len(pps)}")
        self._sps, self._pps = sps[0], pps[0]
        self._asc = bytes(self._audio.extradata or b"")
        if len(self._asc) < 2:
            raise RuntimeError("the AAC encoder gave no AudioSpecificConfig")

        self._frames_in = 0  # video frames given to the encoder
        self._video_time = 0  # next video decode time, in VIDEO_TIMESCALE units
        self._audio_in = 0  # audio samples given to the encoder (before priming)
        self._audio_time = 0  # next audio decode time in samples, priming included (the edit list skips it)
        self._pending = np.zeros(0, np.float32)  # input audio not yet a whole AAC frame
        self._sequence = 0
        self._finished = False

    # ----- encoders

    def _open_video(
        self, crf: int, bitrate: int | None, preset: str, profile: Profile, threads: int
    ) -> av.VideoCodecContext:
        ctx = av.CodecContext.create("libx264", "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width, ctx.height = self.coded_width, self.coded_height
        ctx.pix_fmt = "yuv420p"
        ctx.framerate = Fraction(self.fps)
        ctx.time_base = Fraction(1, self.fps)
        # BT.709 primaries, transfer and matrix, limited range, written into the SPS's VUI so decoders convert
        # back with the matrix we converted with (left unspecified, browsers guess by frame size).
        ctx.color_primaries = BT709
        ctx.color_trc = BT709
        ctx.colorspace = Colorspace.ITU709
        ctx.color_range = ColorRange.MPEG
        ctx.thread_count = threads
        # Global header: SPS/PPS go to extradata at open (→ avcC), not in-band before each IDR.
        ctx.flags |= Flags.global_header
        options = {"preset": preset, "tune": "zerolatency", "profile": profile, "forced-idr": "1"}
        if bitrate is None:
            options["crf"] = str(crf)
        else:
            ctx.bit_rate = bitrate
        ctx.options = options
        ctx.open()
        return ctx

    def _open_audio(self, bitrate: int) -> av.AudioCodecContext:
        ctx = av.CodecContext.create("aac", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = self.sample_rate
        ctx.layout = "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, self.sample_rate)
        ctx.flags |= Flags.global_header
        ctx.open()
        return ctx

    # ----- public properties

    @property
    def codec_string(self) -> str:
        """RFC 6381 codecs value, from the actual SPS: ``avc1.PPCCLL, mp4a.40.2``."""
        return f"{avc_codec_string(self._sps)}, mp4a.40.2"

    @property
    def mime_type(self) -> str:
        """What the browser passes to ``MediaSource.addSourceBuffer``."""
        return f'video/mp4; codecs="{self.codec_string}"'

    @property
    def frames_written(self) -> int:
        return self._frames_in

    # ----- init segment

    def init_segment(self, total_frames: int | None = None) -> bytes:
        """ftyp + moov (two empty-table tracks and mvex): appended once, before any media segment.

        ``total_frames``, when the whole length is known up front (a file, not a live stream), is recorded in
        an mehd box so players know the duration before reading every fragment.
        """
        ftyp = box(b"ftyp", b"iso5", struct.pack(">I", 512), b"iso5", b"iso6", b"avc1", b"mp41")
        mvhd = full_box(
            b"mvhd",
            0,
            0,
            struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, 0),  # creation, modification, timescale, duration unknown
            struct.pack(">IH", 0x0001_0000, 0x0100) + bytes(10),  # rate 1.0, volume 1.0, reserved
            _UNITY_MATRIX,
            bytes(24),  # pre_defined
            struct.pack(">I", AUDIO_TRACK_ID + 1),  # next_track_ID
        )
        mehd = b""
        if total_frames is not None:
            duration = total_frames * MOVIE_TIMESCALE // self.fps
            mehd = full_box(b"mehd", 0, 0, struct.pack(">I", duration))  # fragment_duration, movie timescale
        mvex = box(
            b"mvex",
            mehd,
            full_box(b"trex", 0, 0, struct.pack(">IIIII", VIDEO_TRACK_ID, 1, 0, 0, NON_SYNC_SAMPLE_FLAGS)),
            full_box(b"trex", 0, 0, struct.pack(">IIIII", AUDIO_TRACK_ID, 1, 0, 0, SYNC_SAMPLE_FLAGS)),
        )
        return ftyp + box(b"moov", mvhd, self._video_trak(), self._audio_trak(), mvex)

    def _video_trak(self) -> bytes:
        entry = box(
            b"avc1",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(16),  # pre_defined, reserved
            struct.pack(">HH", self.coded_width, self.coded_height),
            struct.pack(">III", 0x0048_0000, 0x0048_0000, 0),  # 72 dpi, reserved
            struct.pack(">H", 1),  # frame_count
            bytes(32),  # compressorname
            struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
            box(b"avcC", avc_decoder_configuration(self._sps, self._pps)),
        )
        media_header = full_box(b"vmhd", 0, 1, bytes(8))
        return self._trak(VIDEO_TRACK_ID, VIDEO_TIMESCALE, b"vide", b"VideoHandler", media_header, entry, b"")

    def _audio_trak(self) -> bytes:
        entry = box(
            b"mp4a",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(8),  # reserved
            struct.pack(">HHHH", 1, 16, 0, 0),  # channelcount, samplesize, pre_defined, reserved
            struct.pack(">I", self.sample_rate << 16),
            full_box(b"esds", 0, 0, esds_payload(self._asc, self.audio_bitrate)),
        )
        media_header = full_box(b"smhd", 0, 0, bytes(4))
        # One edit: present the media from AAC_PRIMING_SAMPLES on, for the rest of the (fragmented) media;
        # a segment_duration of 0 means "the whole media" in a fragmented file.
        edts = box(b"edts", full_box(b"elst", 0, 0, struct.pack(">IIiHH", 1, 0, AAC_PRIMING_SAMPLES, 1, 0)))
        return self._trak(AUDIO_TRACK_ID, self.sample_rate, b"soun", b"SoundHandler", media_header, entry, edts)

    def _trak(
        self,
        track_id: int,
        timescale: int,
        handler: bytes,
        name: bytes,
        media_header: bytes,
        sample_entry: bytes,
        edts: bytes,
    ) -> bytes:
        is_audio = handler == b"soun"
        width, height = (0, 0) if is_audio else (self.coded_width, self.coded_height)
        tkhd = full_box(
            b"tkhd",
            0,
            0x3,  # enabled, in movie
            struct.pack(">IIIII", 0, 0, track_id, 0, 0),  # creation, modification, id, reserved, duration
            bytes(8),
            struct.pack(">hhHH", 0, 0, 0x0100 if is_audio else 0, 0),  # layer, alternate_group, volume, reserved
            _UNITY_MATRIX,
            struct.pack(">II", width << 16, height << 16),
        )
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))  # language 'und'
        hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name + b"\x00")
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
        empty = struct.pack(">I", 0)
        stbl = box(
            b"stbl",
            full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
            full_box(b"stts", 0, 0, empty),
            full_box(b"stsc", 0, 0, empty),
            full_box(b"stsz", 0, 0, empty, empty),
            full_box(b"stco", 0, 0, empty),
        )
        minf = box(b"minf", media_header, dinf, stbl)
        return box(b"trak", tkhd, edts, box(b"mdia", mdhd, hdlr, minf))

    # ----- media segments

    def write_chunk(self, frames: Sequence[np.ndarray] | np.ndarray, audio: np.ndarray) -> bytes:
        """Encode one chunk; returns one media segment (moof + mdat) starting with an IDR frame.

        ``frames``: RGB uint8 arrays of shape (height, width, 3); ``audio``: int16 mono with exactly
        ``len(frames) * samples_per_frame`` samples. The segment holds all these frames and the audio the AAC
        encoder has given out so far (it lags the input by up to two AAC frames; ``finish`` drains it).
        """
        if self._finished:
            raise RuntimeError("write_chunk after finish")
        if len(frames) == 0:
            raise ValueError("a chunk needs at least one frame")
        expected = len(frames) * self.samples_per_frame
        self._check_audio(
            audio, expected, f"exactly {expected} samples ({len(frames)} frames × {self.samples_per_frame})"
        )
        video = self._encode_frames(frames)
        audio_samples = self._encode_audio(audio)
        return self._fragment(video, audio_samples)

    def finish(self, audio_tail: np.ndarray | None = None) -> bytes:
        """Encode the last audio (fewer samples than one video frame, or none), drain both encoders.

        Returns the last media segment (audio only; b"" if there was nothing left). The writer is closed after.
        """
        if self._finished:
            raise RuntimeError("finish called twice")
        tail = np.zeros(0, np.int16) if audio_tail is None else audio_tail
        self._check_audio(tail, None, f"fewer than {self.samples_per_frame} samples (less than one video frame)")
        if len(tail) >= self.samples_per_frame:
            raise ValueError(
                f"audio_tail has {len(tail)} samples; expected fewer than {self.samples_per_frame} "
                "(whole frames' worth of audio belongs in write_chunk)"
            )
        self._finished = True
        samples = self._encode_audio(tail, flush=True)
        video = self._drain_video(self._video.encode(None))
        if video:  # zerolatency gives every packet at once, so this stays empty
            raise RuntimeError(f"libx264 held back {len(video)} packets despite tune=zerolatency")
        return self._fragment([], samples) if samples else b""

    def _check_audio(self, audio: np.ndarray, expected: int | None, what: str) -> None:
        if not isinstance(audio, np.ndarray) or audio.dtype != np.int16 or audio.ndim != 1:
            shape = getattr(audio, "shape", None)
            dtype = getattr(audio, "dtype", type(audio).__name__)
            raise ValueError(f"audio must be a 1-D int16 numpy array (16-bit mono), got {dtype} of shape {shape}")
        if expected is not None and len(audio) != expected:
            raise ValueError(f"audio has {len(audio)} samples; expected {what} at {self.sample_rate} Hz")

    def _encode_frames(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[Sample]:
        for index, rgb in enumerate(frames):  # all checked before any is encoded: a refusal changes nothing
            if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
                expected = f"uint8 of shape ({self.height}, {self.width}, 3)"
                raise ValueError(f"frame {index} is {rgb.dtype} of shape {rgb.shape}; expected {expected} (RGB)")
        packets: list[av.Packet] = []
        for index, rgb in enumerate(frames):
            if (self.coded_height, self.coded_width) != rgb.shape[:2]:
                pad = ((0, self.coded_height - self.height), (0, self.coded_width - self.width), (0, 0))
                rgb = np.pad(rgb, pad, mode="edge")
            frame = self._reformatter.reformat(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                format="yuv420p",
                src_colorspace=Colorspace.ITU709,
                dst_colorspace=Colorspace.ITU709,
                src_color_range=ColorRange.JPEG,
                dst_color_range=ColorRange.MPEG,
            )
            frame.pts = self._frames_in
            if index == 0:
                frame.pict_type = av.video.frame.PictureType.I  # with forced-idr=1, libx264 makes it an IDR
            self._frames_in += 1
            packets.extend(self._video.encode(frame))
        samples = self._drain_video(packets)
        if len(samples) != len(frames):
            raise RuntimeError(f"libx264 gave {len(samples)} packets for {len(frames)} frames despite zerolatency")
        if not samples[0].sync:
            raise RuntimeError("libx264 did not start the chunk with an IDR frame")
        return samples

    def _drain_video(self, packets: list[av.Packet]) -> list[Sample]:
        duration = VIDEO_TIMESCALE // self.fps
        samples = []
        for packet in packets:
            data = annexb_to_length_prefixed(bytes(packet))
            sync = NAL_IDR in length_prefixed_nal_types(data)
            samples.append(Sample(data, duration, sync))
        return samples

    def _encode_audio(self, audio: np.ndarray, *, flush: bool = False) -> list[Sample]:
        pcm = np.concatenate([self._pending, audio.astype(np.float32) / 32768.0])
        whole = len(pcm) - len(pcm) % AAC_FRAME_SAMPLES
        if flush:
            whole = len(pcm)  # the encoder takes a short last frame and codes it padded
        self._pending = pcm[whole:]
        packets: list[av.Packet] = []
        for start in range(0, whole, AAC_FRAME_SAMPLES):
            block = pcm[start : start + AAC_FRAME_SAMPLES]
            frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._audio_in
            frame.time_base = Fraction(1, self.sample_rate)
            self._audio_in += len(block)
            packets.extend(self._audio.encode(frame))
        if flush:
            packets.extend(self._audio.encode(None))
        samples = []
        for packet in packets:
            if packet.pts is not None and packet.pts + AAC_PRIMING_SAMPLES != self._audio_time:
                raise RuntimeError(
                    f"AAC packet pts {packet.pts} does not follow the previous packets "
                    f"(expected {self._audio_time - AAC_PRIMING_SAMPLES}); the encoder's priming is not "
                    f"{AAC_PRIMING_SAMPLES} samples"
                )
            duration = int(packet.duration or AAC_FRAME_SAMPLES)
            samples.append(Sample(bytes(packet), duration, True))
            self._audio_time += duration
        return samples

    def _fragment(self, video: list[Sample], audio: list[Sample]) -> bytes:
        """moof (mfhd + one traf per track with samples) + mdat (video samples, then audio samples)."""
        video_start = self._video_time
        audio_start = self._audio_time - sum(s.duration for s in audio)
        self._video_time += sum(s.duration for s in video)
        self._sequence += 1
        tracks = [(VIDEO_TRACK_ID, video_start, video, True), (AUDIO_TRACK_ID, audio_start, audio, False)]
        tracks = [t for t in tracks if t[2]]

        def build(data_offsets: list[int]) -> bytes:
            trafs = [
                _traf(track_id, start, samples, offset, with_flags)
                for (track_id, start, samples, with_flags), offset in zip(tracks, data_offsets, strict=True)
            ]
            return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence)), *trafs)

        moof_size = len(build([0] * len(tracks)))
        offsets = []
        position = moof_size + 8  # first byte of the mdat payload, from the start of the moof
        for _, _, samples, _ in tracks:
            offsets.append(position)
            position += sum(len(s.data) for s in samples)
        payload = b"".join(s.data for _, _, samples, _ in tracks for s in samples)
        return build(offsets) + box(b"mdat", payload)


def _traf(track_id: int, base_time: int, samples: list[Sample], data_offset: int, with_flags: bool) -> bytes:
    tfhd = full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_time))
    flags = TRUN_DATA_OFFSET | TRUN_SAMPLE_DURATION | TRUN_SAMPLE_SIZE | (TRUN_SAMPLE_FLAGS if with_flags else 0)
    rows = []
    for s in samples:
        row = struct.pack(">II", s.duration, len(s.data))
        if with_flags:
            row += struct.pack(">I", SYNC_SAMPLE_FLAGS if s.sync else NON_SYNC_SAMPLE_FLAGS)
        rows.append(row)
    trun = full_box(b"trun", 0, flags, struct.pack(">Ii", len(samples), data_offset), *rows)
    return box(b"traf", tfhd, tfdt, trun)


def mux_to_mp4(
    frames: Sequence[np.ndarray] | np.ndarray,
    audio: np.ndarray,
    *,
    fps: int = 25,
    sample_rate: int = 16_000,
    fragment_frames: int = 25,
) -> bytes:
    """A whole MP4 file (init segment + fragments of ``fragment_frames``) for the request/response API.

    ``audio`` covers the frames (``len(frames) * sample_rate // fps`` samples) plus at most one frame's worth
    less one sample of tail.
    """
    if len(frames) == 0:
        raise ValueError("no frames to mux")
    height, width = frames[0].shape[:2]
    writer = FragmentedMp4Writer(width, height, fps=fps, sample_rate=sample_rate)
    per_frame = writer.samples_per_frame
    covered = len(frames) * per_frame
    if not covered <= len(audio) < covered + per_frame:
        raise ValueError(
            f"audio has {len(audio)} samples; expected {covered} to {covered + per_frame - 1} "
            f"for {len(frames)} frames at {fps} fps and {sample_rate} Hz"
        )
    parts = [writer.init_segment(total_frames=len(frames))]
    for start in range(0, len(frames), fragment_frames):
        chunk = frames[start : start + fragment_frames]
        parts.append(writer.write_chunk(chunk, audio[start * per_frame : (start + len(chunk)) * per_frame]))
    parts.append(writer.finish(audio[covered:]))
    return b"".join(parts)
