"""The avatar of a voice agent, from the agent's side: speech in, the avatar's frames and their audio out, decoded.

An agent process (Pipecat, LiveKit Agents: ``lipsync.integrations``) opens a conversation session on the
gateway's ``/ws/stream`` and pushes its TTS audio; the gateway answers with fMP4 fragments (H.264 + AAC), which
:class:`FragmentDecoder` decodes here with PyAV into :class:`AvatarFrame` s — each frame's picture and the 640
samples (16 kHz) that play with it. Why this and not WebRTC between two servers: docs/agents.md (measured).

Interruptions are cut here at once, whatever the network still carries: :meth:`AvatarSession.interrupt` drops
every frame not yet taken and every frame the server sent before it answered ``interrupted``; the frames from
the answer's ``next_frame`` on are the avatar idling.

Needs only numpy, PyAV and ``websockets`` (the ``agent`` extra), not the gateway's own dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import websockets

from lipsync.audio import FPS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

log = logging.getLogger(__name__)

# The gateway's AAC encoder starts with this many samples of priming, which its edit list skips
# (gateway/media/muxer.py; a test checks that both say the same).
AAC_PRIMING_SAMPLES = 1024
# After an interrupt's cut, AAC's overlap leaves the speech's decay in the next frames' audio (≈ 35 RMS, less
# than 1024 samples): the server played silence there, so those frames' audio is silence here too.
CUT_DECAY_FRAMES = 2
# Frames decoded and not yet taken: more than this and the agent is not playing them (a bug, or stopped).
MAX_QUEUED_FRAMES = 10 * FPS


@dataclass(frozen=True)
class AvatarFrame:
    number: int  # the session's frame number: 25 a second from `ready`
    image: np.ndarray  # (H, W, 3) uint8 RGB
    audio: np.ndarray  # int16, 16 kHz mono, 640 samples: what plays with this frame

    @property
    def speaking(self) -> bool:
        """Whether this frame's audio is speech rather than the idle silence (digital zeros) between utterances."""
        return bool(np.abs(self.audio.astype(np.int32)).max(initial=0) > 1)


class FragmentDecoder:
    """The stream's fMP4 decoded fragment by fragment: the init segment once, then each media segment.

    The fragments are the gateway's own (docs/fmp4.md): a moof with one traf per track (tfdt, then a trun of
    sizes and durations) and the mdat. Their samples go straight to decoders kept for the whole stream.
    (A demuxer opened per fragment would apply the audio edit list to each fragment's first packet and
    drop 1024 samples of every one.)
    """

    def __init__(self, init_segment: bytes) -> None:
        with av.open(io.BytesIO(init_segment), format="mp4", mode="r") as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            video_decoder = av.CodecContext.create(video.codec_context.name, "r")
            audio_decoder = av.CodecContext.create(audio.codec_context.name, "r")
            assert isinstance(video_decoder, av.VideoCodecContext) and isinstance(audio_decoder, av.AudioCodecContext)
            video_decoder.extradata = video.codec_context.extradata
            audio_decoder.extradata = audio.codec_context.extradata
            self._video, self._audio = video_decoder, audio_decoder
            assert video.time_base is not None
            self._ticks_per_frame = round(1 / (video.time_base * FPS))
            self._tracks = {video.id: "video", audio.id: "audio"}
        self._images: dict[int, np.ndarray] = {}
        self._samples = np.zeros(0, np.int16)  # decoded audio not yet given to a frame
        self._first_sample = -AAC_PRIMING_SAMPLES  # the stream sample index of _samples[0]
        self.bytes_in = 0

    def decode(self, segment: bytes) -> list[AvatarFrame]:
        """The frames whose picture and audio are both decoded, in order (a frame whose audio is still in the
        encoder's next packet waits for the next fragment)."""
        self.bytes_in += len(segment)
        for track_id, decode_time, data in fragment_samples(segment):
            packet = av.Packet(data)
            if self._tracks.get(track_id) == "video":
                for picture in self._video.decode(packet):
                    self._images[decode_time // self._ticks_per_frame] = picture.to_ndarray(format="rgb24")
            elif self._tracks.get(track_id) == "audio":
                for sound in self._audio.decode(packet):
                    pcm = sound.to_ndarray().reshape(-1)
                    pcm16 = np.clip(np.rint(pcm * 32768.0), -32768, 32767).astype(np.int16)
                    self._samples = np.concatenate([self._samples, pcm16])
        return self._ready()

    def finish(self) -> list[AvatarFrame]:
        """At the end of the stream: the frames still waiting, with their audio padded by silence."""
        frames = self._ready()
        for number in sorted(self._images):
            frames.append(self._take(number, pad=True))
        return frames

    def _ready(self) -> list[AvatarFrame]:
        frames = []
        for number in sorted(self._images):
            if (number + 1) * SAMPLES_PER_VIDEO_FRAME > self._first_sample + len(self._samples):
                break
            frames.append(self._take(number, pad=False))
        return frames

    def _take(self, number: int, pad: bool) -> AvatarFrame:
        start = number * SAMPLES_PER_VIDEO_FRAME - self._first_sample
        audio = self._samples[max(start, 0) : start + SAMPLES_PER_VIDEO_FRAME]
        if pad and len(audio) < SAMPLES_PER_VIDEO_FRAME:
            audio = np.concatenate([audio, np.zeros(SAMPLES_PER_VIDEO_FRAME - len(audio), np.int16)])
        # What this frame read is no longer needed (frames come in order).
        drop = min(max(start + SAMPLES_PER_VIDEO_FRAME, 0), len(self._samples))
        self._samples, self._first_sample = self._samples[drop:], self._first_sample + drop
        return AvatarFrame(number, self._images.pop(number), audio.copy())


def fragment_samples(segment: bytes) -> list[tuple[int, int, bytes]]:
    """(track id, decode time, sample bytes) of each sample of one media segment (moof + mdat), in order."""
    samples = []
    moof_start = 0
    for kind, start, end in _boxes(segment, 0, len(segment)):
        if kind != b"moof":
            continue
        moof_start = start
        for traf_kind, traf_start, traf_end in _boxes(segment, start + 8, end):
            if traf_kind != b"traf":
                continue
            track_id = time = 0
            for child, child_start, _ in _boxes(segment, traf_start + 8, traf_end):
                body = child_start + 12  # after the size, type, version and flags
                version, flags = segment[child_start + 8], int.from_bytes(segment[child_start + 9 : body])
                if child == b"tfhd":
                    track_id = int.from_bytes(segment[body : body + 4])
                elif child == b"tfdt":
                    time = int.from_bytes(segment[body : body + (8 if version == 1 else 4)])
                elif child == b"trun":
                    samples += _trun_samples(segment, body, flags, moof_start, track_id, time)
    return samples


def _trun_samples(
    data: bytes, at: int, flags: int, moof_start: int, track_id: int, time: int
) -> list[tuple[int, int, bytes]]:
    count = int.from_bytes(data[at : at + 4])
    at += 4
    offset = moof_start
    if flags & 0x1:  # data offset, from the moof (default-base-is-moof)
        offset += int.from_bytes(data[at : at + 4], signed=True)
        at += 4
    if flags & 0x4:  # first sample flags
        at += 4
    out = []
    for _ in range(count):
        duration = size = 0
        if flags & 0x100:
            duration, at = int.from_bytes(data[at : at + 4]), at + 4
        if flags & 0x200:
            size, at = int.from_bytes(data[at : at + 4]), at + 4
        at += 4 * (bool(flags & 0x400) + bool(flags & 0x800))  # sample flags, composition offset
        out.append((track_id, time, data[offset : offset + size]))
        offset += size
        time += duration
    return out


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    boxes = []
    while start + 8 <= end:
        size = int.from_bytes(data[start : start + 4])
        if size < 8 or start + size > end:
            raise ValueError(f"a box at byte {start} has a bad size ({size})")
        boxes.append((data[start + 4 : start + 8], start, start + size))
        start += size
    return boxes


class SpeechResampler:
    """An agent's speech (int16, interleaved, any rate and channel count) → int16 16 kHz mono for
    :meth:`AvatarSession.speak`. The resampler carries its state across the chunks of one utterance;
    :meth:`reset` at the next one."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None

    def reset(self) -> None:
        self._resampler = None

    def __call__(self, pcm: bytes, sample_rate: int, channels: int) -> np.ndarray:
        samples = np.frombuffer(pcm, dtype=np.int16)
        if sample_rate == SAMPLE_RATE and channels == 1:
            return samples.copy()
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        sound = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format="s16", layout="mono" if channels == 1 else "stereo"
        )
        sound.sample_rate = sample_rate
        pieces = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(sound)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


@dataclass
class SessionEvents:
    """What the server said besides media, for the agent's logs and metrics (each optional)."""

    on_ready: Callable[[dict[str, Any]], None] | None = None
    on_stats: Callable[[dict[str, Any]], None] | None = None
    on_interrupted: Callable[[dict[str, Any]], None] | None = None


@dataclass
class AvatarSession:
    """One conversation session on the gateway (``/ws/stream``), from an agent.

    >>> async with AvatarSession.connect("ws://gateway:8000", avatar_id) as avatar:
    ...     await avatar.speak(pcm16k)
    ...     async for frame in avatar.frames():
    ...         ...
    """

    websocket: Any
    ready: dict[str, Any]
    events: SessionEvents = field(default_factory=SessionEvents)
    _frames: asyncio.Queue[AvatarFrame | None] = field(default_factory=lambda: asyncio.Queue(maxsize=MAX_QUEUED_FRAMES))
    _reader: asyncio.Task[None] | None = None
    _cut_below: int | None = None  # after an interrupt: frames below this are the cut speech
    _silent_from: int | None = None  # after an interrupt: the first idle frame (its decay is silenced)
    _awaiting_interrupted: bool = False
    end_message: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    bytes_received: int = 0  # everything the server sent: fMP4 and messages

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        avatar_id: str,
        *,
        options: dict[str, Any] | None = None,
        token: str | None = None,
        events: SessionEvents | None = None,
    ) -> AsyncIterator[AvatarSession]:
        """A conversation session of ``avatar_id`` on the gateway at ``url`` (``ws://host:port``)."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with websockets.connect(f"{url}/ws/stream", additional_headers=headers, max_size=None) as socket:
            start = {"type": "start", "avatar_id": avatar_id, "mode": "conversation", "options": options or {}}
            await socket.send(json.dumps(start))
            ready = json.loads(await socket.recv())
            if ready.get("type") != "ready":
                raise AvatarError(ready.get("code", "error"), ready.get("message", str(ready)))
            session = cls(socket, ready, events or SessionEvents())
            if session.events.on_ready is not None:
                session.events.on_ready(ready)
            init = await socket.recv()
            if not isinstance(init, bytes):
                raise AvatarError("bad_stream", f"expected the init segment, got {init[:200]!r}")
            session._reader = asyncio.ensure_future(session._read(FragmentDecoder(init)))
            try:
                yield session
            finally:
                session._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await session._reader

    # ------------------------------------------------------------------------------------------ speech in

    async def utterance(self, utterance_id: str) -> None:
        """The audio that follows is the utterance ``utterance_id`` (the stats report its first frame)."""
        await self.websocket.send(json.dumps({"type": "utterance", "id": utterance_id}))

    async def speak(self, pcm: np.ndarray) -> None:
        """Queue speech: int16 PCM, 16 kHz mono. It is spoken in order, on the server's clock."""
        await self.websocket.send(np.ascontiguousarray(pcm, dtype="<i2").tobytes())

    async def interrupt(self) -> None:
        """Stop the current utterance: what is queued here is dropped at once; the server idles from its cut."""
        self._awaiting_interrupted = True
        while not self._frames.empty():
            self._frames.get_nowait()
        await self.websocket.send(json.dumps({"type": "interrupt"}))

    async def end(self) -> None:
        """No more speech: what is queued is still played, then :meth:`frames` ends."""
        await self.websocket.send(json.dumps({"type": "end"}))

    # ------------------------------------------------------------------------------------------ frames out

    async def frames(self) -> AsyncIterator[AvatarFrame]:
        """The avatar's frames in order, each with its audio, as they are decoded (play them at 25 a second)."""
        while (frame := await self._frames.get()) is not None:
            yield frame
        if self.error is not None:
            raise AvatarError(self.error.get("code", "error"), self.error.get("message", ""))

    async def _read(self, decoder: FragmentDecoder) -> None:
        try:
            async for message in self.websocket:
                self.bytes_received += len(message)
                if isinstance(message, bytes):
                    for frame in decoder.decode(message):
                        await self._offer(frame)
                    continue
                event = json.loads(message)
                kind = event.get("type")
                if kind == "stats" and self.events.on_stats is not None:
                    self.events.on_stats(event)
                elif kind == "interrupted":
                    self._cut_below, self._silent_from = int(event["next_frame"]), int(event["frame"])
                    self._awaiting_interrupted = False
                    while not self._frames.empty():  # decoded before the answer: the cut speech
                        self._frames.get_nowait()
                    if self.events.on_interrupted is not None:
                        self.events.on_interrupted(event)
                elif kind == "end":
                    self.end_message = event
                    for frame in decoder.finish():
                        await self._offer(frame)
                elif kind == "error":
                    self.error = event
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._frames.put(None)

    async def _offer(self, frame: AvatarFrame) -> None:
        if self._awaiting_interrupted or (self._cut_below is not None and frame.number < self._cut_below):
            return  # the speech an interrupt cut, still on its way when it came
        if self._silent_from is not None and 0 <= frame.number - self._silent_from < CUT_DECAY_FRAMES:
            frame = AvatarFrame(frame.number, frame.image, np.zeros_like(frame.audio))
        await self._frames.put(frame)


class AvatarError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


async def upload_avatar(base_url: str, image: bytes, token: str | None = None) -> dict[str, Any]:
    """POST the portrait to ``base_url`` (``http://host:port``); the answer (``avatar_id``, ``framings`` sizes…)."""
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def post() -> dict[str, Any]:
        request = urllib.request.Request(f"{base_url}/v1/avatars", data=image, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    return await asyncio.to_thread(post)


async def upload_portrait(base_url: str, image: bytes, token: str | None = None) -> str:
    """POST the portrait to ``base_url``; its avatar id."""
    return str((await upload_avatar(base_url, image, token))["avatar_id"])


__all__ = [
    "AvatarError",
    "AvatarFrame",
    "AvatarSession",
    "FragmentDecoder",
    "SessionEvents",
    "SpeechResampler",
    "upload_avatar",
    "upload_portrait",
]
