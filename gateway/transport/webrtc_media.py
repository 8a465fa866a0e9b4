"""A session's frames and audio as WebRTC tracks (aiortc): one video track at 25 fps, one audio track, in sync.

The session puts each chunk (RGB frames and their 16 kHz audio, 640 samples a frame) into :class:`AvatarMedia`;
its two tracks take from it in real time on one shared clock, so frame ``n`` and its audio leave together.
When nothing is queued the video repeats its last frame (the portrait at first) and the audio is silence;
both then take up the next chunk at the same moment. What is queued is bounded (``max_frames``): a session that
renders faster than real time waits in :meth:`AvatarMedia.put`, and an interrupt can still drop every chunk
that has not begun to play (:meth:`AvatarMedia.drop_from`).

The timestamps are the media's own: 90 kHz video at exactly 3600 ticks a frame (aiortc's ready-made video
track assumes 30 fps), and audio at 16 kHz in 20 ms frames (Opus's packet length).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fractions

import av
import numpy as np
from aiortc import MediaStreamTrack

from lipsync.audio import FPS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

VIDEO_CLOCK = 90_000
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK // FPS
AUDIO_FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
FRAME_S = 1 / FPS
AUDIO_FRAME_S = AUDIO_FRAME_SAMPLES / SAMPLE_RATE


@dataclasses.dataclass(eq=False)
class _Chunk:
    start: int  # the session's number of its first frame
    frames: collections.deque[np.ndarray]
    audio: np.ndarray  # int16
    frames_total: int
    audio_taken: int = 0

    @property
    def begun(self) -> bool:
        return len(self.frames) < self.frames_total or self.audio_taken > 0

    @property
    def audio_left(self) -> int:
        return len(self.audio) - self.audio_taken


class AvatarMedia:
    """The :class:`gateway.session.core.FrameSink` of a WebRTC session, and the source of its two tracks."""

    mime_type = "webrtc"

    def __init__(self, still: np.ndarray, max_seconds: float = 2.0, max_bytes: int = 48 << 20) -> None:
        """``still`` (the framing's picture) is shown until the first frame. The queue holds at most
        ``max_seconds`` of frames and ``max_bytes`` of pictures (a 1280-pixel framing: about half a second)."""
        self.max_frames = max(2, min(round(max_seconds * FPS), max_bytes // max(still.nbytes, 1)))
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._queued_frames = 0
        self._room = asyncio.Event()  # set while fewer than max_frames are queued
        self._last = still
        self._start: float | None = None  # loop time of media time 0, set by the first track to ask
        self._finished = False
        self.drained = asyncio.Event()  # set once finished and everything was played
        self.video = AvatarVideoTrack(self)
        self.audio = AvatarAudioTrack(self)
        self.frames_played = 0

    @property
    def queued_frames(self) -> int:
        """Frames handed over and not yet played."""
        return self._queued_frames

    # ------------------------------------------------------------------------------------ the session's side

    async def put(self, first_frame: int, frames: list[np.ndarray], audio: np.ndarray) -> None:
        if len(audio) != len(frames) * SAMPLES_PER_VIDEO_FRAME:
            raise ValueError(f"{len(frames)} frames need {len(frames) * SAMPLES_PER_VIDEO_FRAME} samples")
        while self._queued_frames >= self.max_frames:
            self._room.clear()
            await self._room.wait()
        self._chunks.append(_Chunk(first_frame, collections.deque(frames), audio, len(frames)))
        self._queued_frames += len(frames)

    def finish(self, audio_tail: np.ndarray) -> None:
        if len(audio_tail):
            self._chunks.append(_Chunk(-1, collections.deque(), audio_tail, 0))
        self._finished = True
        self._check_drained()

    def cut_point(self, committed: int) -> int:
        for chunk in self._chunks:
            if not chunk.begun and chunk.frames_total:
                return chunk.start
        return committed

    def drop_from(self, frame: int) -> int:
        dropped = 0
        while self._chunks and self._chunks[-1].start >= frame and not self._chunks[-1].begun:
            chunk = self._chunks.pop()
            dropped += len(chunk.frames)
        self._queued_frames -= dropped
        self._room.set()
        return dropped

    # ----------------------------------------------------------------------------------- the tracks' side

    async def due(self, media_time: float) -> None:
        """Wait until ``media_time`` seconds after the media started (the first track to ask starts it)."""
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + media_time - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def next_frame(self) -> np.ndarray:
        """The next frame to show: the oldest queued, else the last one again (a freeze, not a gap)."""
        chunk = next((chunk for chunk in self._chunks if chunk.frames), None)
        if chunk is not None:
            self._last = chunk.frames.popleft()
            self._queued_frames -= 1
            self.frames_played += 1
            self._pop_played()
            self._room.set()
        return self._last

    def next_audio(self, count: int) -> np.ndarray:
        """The next ``count`` samples, silence where nothing is queued."""
        out = np.zeros(count, np.int16)
        filled = 0
        for chunk in self._chunks:
            if filled == count:
                break
            take = min(chunk.audio_left, count - filled)
            out[filled : filled + take] = chunk.audio[chunk.audio_taken : chunk.audio_taken + take]
            chunk.audio_taken += take
            filled += take
        self._pop_played()
        return out

    def _pop_played(self) -> None:
        while self._chunks and not self._chunks[0].frames and self._chunks[0].audio_left == 0:
            self._chunks.popleft()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._finished and not self._chunks:
            self.drained.set()

    def stop(self) -> None:
        self.video.stop()
        self.audio.stop()


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, media: AvatarMedia) -> None:
        super().__init__()
        self._media = media
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        await self._media.due(self._count * FRAME_S)
        frame = av.VideoFrame.from_ndarray(self._media.next_frame(), format="rgb24")
        frame.pts = self._count * VIDEO_TICKS_PER_FRAME
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, media: AvatarMedia) -> None:
        super().__init__()
        self._media = media
        self._count = 0

    async def recv(self) -> av.AudioFrame:
        await self._media.due(self._count * AUDIO_FRAME_S)
        samples = self._media.next_audio(AUDIO_FRAME_SAMPLES)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._count * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._count += 1
        return frame
