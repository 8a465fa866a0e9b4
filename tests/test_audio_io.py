"""Uploaded audio reaches only the demuxer of an accepted container, chosen by its leading bytes.

Every format the docs and the page promise still decodes; anything else FFmpeg would have probed its way into —
an ffconcat script naming a local file, a playlist, an image, text, audio containers we do not offer — is
refused in words that name the accepted formats, before any demuxer sees it.
"""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from lipsync.audio_io import ACCEPTED_FORMATS, AudioDecodeError, decode_audio, sniff_container

RATE = 16000


def tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def encode(container: str, codec: str, rate: int = RATE, options: dict[str, str] | None = None) -> bytes:
    """One second of a 440 Hz tone, encoded with PyAV's (FFmpeg's) own muxer and encoder."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        context = stream.codec_context
        resampler = av.AudioResampler(
            format=context.format.name, layout="mono", rate=rate, frame_size=context.frame_size or None
        )
        frame = av.AudioFrame.from_ndarray(tone(rate)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def wav_bytes(rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.rint(tone(rate) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def ffmpeg_vorbis() -> bytes:
    """OGG/Vorbis from the ffmpeg command (PyAV's own Vorbis encoder is experimental)."""
    command = ["ffmpeg", "-loglevel", "error", "-f", "wav", "-i", "pipe:", "-c:a", "libvorbis", "-f", "ogg", "pipe:"]
    return subprocess.run(command, input=wav_bytes(), capture_output=True, check=True).stdout


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / RATE)[int(np.argmax(spectrum))])


# (container, demuxer it must reach, how to make it). WebM/Opus and OGG/Opus are what browsers record.
PROMISED = {
    "wav": ("wav", wav_bytes),
    "wav-rf64": ("wav", lambda: encode("wav", "pcm_s16le", options={"rf64": "always"})),
    "mp3-id3": ("mp3", lambda: encode("mp3", "libmp3lame")),
    "mp3-bare": ("mp3", lambda: encode("mp3", "libmp3lame", options={"id3v2_version": "0"})),
    "ogg-opus": ("ogg", lambda: encode("ogg", "libopus", rate=48000)),
    "ogg-vorbis": ("ogg", ffmpeg_vorbis),
    "webm-opus": ("matroska", lambda: encode("webm", "libopus", rate=48000)),
    "mka-aac": ("matroska", lambda: encode("matroska", "aac")),
    "m4a-aac": ("mov", lambda: encode("ipod", "aac")),
    "mp4-aac": ("mov", lambda: encode("mp4", "aac")),
    "flac": ("flac", lambda: encode("flac", "flac")),
    "aac-adts": ("aac", lambda: encode("adts", "aac")),
    "aac-adts-id3": ("aac", lambda: encode("adts", "aac", options={"write_id3v2": "1"})),
}


@pytest.mark.parametrize("kind", PROMISED)
def test_every_promised_format_decodes(kind: str) -> None:
    demuxer, make = PROMISED[kind]
    data = make()
    assert sniff_container(data) == demuxer
    decoded = decode_audio(data)
    assert decoded.dtype == np.float32
    assert abs(decoded.size - RATE) <= 2048  # one second (AAC and Opus add their priming samples)
    assert abs(dominant_hz(decoded[1000:-3000]) - 440.0) < 3.0


def refused(data: bytes) -> str:
    """The refusal's message; it must name the accepted formats."""
    assert sniff_container(data) is None
    with pytest.raises(AudioDecodeError) as refusal:
        decode_audio(data)
    message = str(refusal.value)
    assert message == f"it is not an audio file in a format we accept ({ACCEPTED_FORMATS})"
    return message


def test_an_ffconcat_script_naming_a_local_audio_file_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg's probing recognises ffconcat and its concat demuxer opens the files it names (a plain relative
    name passes its `safe` check): the upload would have been the server's own file, read back."""
    (tmp_path / "tone.wav").write_bytes(wav_bytes())
    monkeypatch.chdir(tmp_path)  # where a relative name in the script resolves
    script = b"ffconcat version 1.0\nfile 'tone.wav'\n"
    with av.open(io.BytesIO(script)) as probed:  # what probing does with it: the named file's audio
        assert probed.format.name == "concat" and probed.streams.audio
    refused(script)
    refused(b"# a comment first\n" + script)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\ntone.wav\n#EXT-X-ENDLIST\n", id="hls-m3u8"),
        pytest.param(b"hello, this is plain text, not audio\n" * 20, id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"not a frame" * 10, id="id3-then-nothing"),
    ],
)
def test_text_and_playlists_are_refused_before_any_demuxer(data: bytes) -> None:
    refused(data)


def test_an_image_is_refused_in_words_naming_the_formats() -> None:
    for image_format in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format=image_format)
        message = refused(buffer.getvalue())
        assert "WAV, MP3, OGG" in message and "WebM" in message


@pytest.mark.parametrize(("container", "codec"), [("au", "pcm_s16be"), ("aiff", "pcm_s16be")])
def test_audio_containers_we_do_not_offer_are_refused_though_ffmpeg_reads_them(container: str, codec: str) -> None:
    data = encode(container, codec)
    with av.open(io.BytesIO(data)) as probed:  # FFmpeg itself would read it
        assert probed.streams.audio
    refused(data)


def test_bytes_that_begin_like_an_accepted_container_but_are_not_fail_in_words() -> None:
    with pytest.raises(AudioDecodeError, match="begins as OGG does, but FFmpeg cannot read it as OGG"):
        decode_audio(b"OggS" + b"\x00" * 200)


def test_a_path_is_still_probed_for_offline_tools(tmp_path: Path) -> None:
    """The operator's own files (offline tools) may be in any format FFmpeg reads."""
    path = tmp_path / "tone.au"
    path.write_bytes(encode("au", "pcm_s16be"))
    assert abs(decode_audio(path).size - RATE) <= 64
