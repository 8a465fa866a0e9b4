"""A LiveKit Agents ``VideoGenerator`` backed by this project's gateway, for an avatar worker.

In LiveKit's avatar pattern the agent sends its TTS audio to an avatar worker in the same room; the worker's
``AvatarRunner`` feeds it to a ``VideoGenerator`` and publishes the frames it yields through an
``AVSynchronizer``. :class:`LipsyncVideoGenerator` is that generator (``examples/livekit_avatar_worker.py``
runs it; a LiveKit server is needed for the room, not for this class):

- ``push_audio(frame)``: the agent's speech goes to the gateway (resampled to 16 kHz); the first frame of a
  segment starts an utterance. ``push_audio(AudioSegmentEnd())`` closes the segment.
- Iterating yields the avatar's ``rtc.VideoFrame`` s (RGB24, 25 a second: the synchroniser paces them) and,
  with each frame of speech, its 40 ms ``rtc.AudioFrame``; ``AudioSegmentEnd`` follows a segment's last audio.
- ``clear_buffer()``: the gateway stops the utterance, and the frames queued here are dropped at once.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

from lipsync.agent import AvatarFrame, AvatarSession, SpeechResampler
from lipsync.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME


class LipsyncVideoGenerator(VideoGenerator):
    """Frames of a gateway session, as LiveKit's AvatarRunner consumes them (see the module's docstring)."""

    def __init__(self, avatar: AvatarSession) -> None:
        self._avatar = avatar
        self._to_16k = SpeechResampler()
        self._utterances = itertools.count(1)
        self._in_segment = False  # audio of an open segment is arriving
        self._segments: list[int] = []  # samples (16 kHz) of each closed segment not yet played out
        self._open_samples = 0  # samples of the segment still arriving
        self._played = 0  # speaking samples yielded of the oldest segment

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, avatar_id: str, *, token: str | None = None, options: dict[str, Any] | None = None
    ) -> AsyncIterator[LipsyncVideoGenerator]:
        """A generator on a new conversation session of ``avatar_id`` at the gateway ``url`` (``http://…``)."""
        ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        async with AvatarSession.connect(
            ws_url, avatar_id, options={"engine": "wav2lip", **(options or {})}, token=token
        ) as avatar:
            yield cls(avatar)

    @property
    def size(self) -> tuple[int, int]:
        """The video's (width, height): the AvatarOptions of the runner."""
        return int(self._avatar.ready["width"]), int(self._avatar.ready["height"])

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            if self._in_segment:
                self._segments.append(self._open_samples)
            self._in_segment, self._open_samples = False, 0
            return
        if not self._in_segment:
            self._in_segment = True
            self._to_16k.reset()
            await self._avatar.utterance(f"segment-{next(self._utterances)}")
        pcm = self._to_16k(bytes(frame.data), frame.sample_rate, frame.num_channels)
        self._open_samples += pcm.size
        await self._avatar.speak(pcm)

    async def clear_buffer(self) -> None:
        self._in_segment, self._open_samples, self._segments, self._played = False, 0, [], 0
        await self._avatar.interrupt()

    async def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        async for frame in self._avatar.frames():
            height, width = frame.image.shape[:2]
            yield rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.image.tobytes())
            if frame.speaking:
                yield _audio_frame(frame)
                self._played += SAMPLES_PER_VIDEO_FRAME
            # A segment is played out once its samples were (less the part of a frame its end may leave).
            if self._segments and self._played >= self._segments[0] - SAMPLES_PER_VIDEO_FRAME:
                self._played = max(0, self._played - self._segments.pop(0))
                yield AudioSegmentEnd()


def _audio_frame(frame: AvatarFrame) -> rtc.AudioFrame:
    return rtc.AudioFrame(
        data=frame.audio.tobytes(),
        sample_rate=SAMPLE_RATE,
        num_channels=1,
        samples_per_channel=SAMPLES_PER_VIDEO_FRAME,
    )


__all__ = ["LipsyncVideoGenerator"]
