"""A Pipecat video service backed by this project's gateway: TTS audio in, the avatar's frames and audio out.

Put it after the TTS service, as Pipecat's hosted-avatar services (Simli, Tavus) go::

    avatar = LipsyncVideoService(url="http://gateway:8000", avatar_id=avatar_id)
    pipeline = Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])

- ``TTSStartedFrame`` starts an utterance (the gateway reports its first frame); ``TTSAudioRawFrame`` s go to
  the gateway (resampled to 16 kHz) and are not passed on: the avatar's audio replaces them.
- Out: an ``OutputImageRawFrame`` every 40 ms (25 fps) on this process's clock, and with each frame of speech
  its 40 ms of audio as a ``TTSAudioRawFrame``, pushed together so the transport plays them in sync. Between
  utterances the avatar idles: frames without audio.
- ``InterruptionFrame``: the gateway is told to stop and every frame queued here is dropped at once; the
  next frames are the avatar idling.
- Metrics: TTFB is from an utterance's first audio to its first speaking frame pushed.
- ``EndFrame``: what is queued is still played, then the session ends. ``CancelFrame`` ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from lipsync.agent import AvatarFrame, AvatarSession, SpeechResampler
from lipsync.audio import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)
FRAME_S = 1 / FPS
# After EndFrame, the longest the service waits for the speech queued to be played.
DRAIN_TIMEOUT_S = 120.0


class LipsyncVideoService(AIService):
    """The avatar of a Pipecat bot, rendered by a lipsync-triton gateway (see the module's docstring)."""

    def __init__(
        self,
        *,
        url: str,
        avatar_id: str,
        token: str | None = None,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``url``: the gateway (``http://host:port``); ``avatar_id``: a portrait uploaded to it
        (``lipsync.agent.upload_portrait``); ``options``: the session's options (engine, framing, …)."""
        kwargs.setdefault("settings", ServiceSettings(model=None))  # no model to choose: the gateway serves it
        super().__init__(**kwargs)
        self._url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self._avatar_id = avatar_id
        self._token = token
        self._options = {"engine": "wav2lip", **(options or {})}
        self._session: contextlib.AbstractAsyncContextManager[AvatarSession] | None = None
        self._avatar: AvatarSession | None = None
        self._player: asyncio.Task[None] | None = None
        self._to_16k = SpeechResampler()
        self._utterances = itertools.count(1)
        self._awaiting_first_frame = False  # TTFB: an utterance's audio went out, its first frame not yet
        self.size: tuple[int, int] | None = None  # the video's (width, height), once connected

    def can_generate_metrics(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._session = AvatarSession.connect(self._url, self._avatar_id, options=self._options, token=self._token)
        self._avatar = await self._session.__aenter__()
        self.size = (int(self._avatar.ready["width"]), int(self._avatar.ready["height"]))
        self._player = self.create_task(self._play())

    async def stop(self, frame: EndFrame) -> None:
        if self._avatar is not None and self._player is not None:
            await self._avatar.end()
            with contextlib.suppress(TimeoutError):  # the queued speech plays out first
                await asyncio.wait_for(asyncio.shield(self._player), DRAIN_TIMEOUT_S)
        await self._close()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._close()
        await super().cancel(frame)

    async def _close(self) -> None:
        if self._player is not None:
            await self.cancel_task(self._player)
            self._player = None
        if self._session is not None:
            await self._session.__aexit__(None, None, None)
            self._session = self._avatar = None

    # ------------------------------------------------------------------------------------------- frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        avatar = self._avatar
        if isinstance(frame, TTSAudioRawFrame) and avatar is not None:
            if not self._awaiting_first_frame:
                self._awaiting_first_frame = True
                await self.start_ttfb_metrics()
            await avatar.speak(self._to_16k(frame.audio, frame.sample_rate, frame.num_channels))
            return  # the avatar's own audio takes its place, in sync with the frames
        if isinstance(frame, TTSStartedFrame) and avatar is not None:
            self._to_16k.reset()
            await avatar.utterance(f"utterance-{next(self._utterances)}")
        elif isinstance(frame, InterruptionFrame) and avatar is not None:
            self._awaiting_first_frame = False
            await avatar.interrupt()
        await self.push_frame(frame, direction)

    # ------------------------------------------------------------------------------------------ frames out

    async def _play(self) -> None:
        """The avatar's frames at 25 a second on this process's clock, each with its audio."""
        assert self._avatar is not None
        loop = asyncio.get_running_loop()
        due: float | None = None
        async for frame in self._avatar.frames():
            now = loop.time()
            if due is None or now > due + FRAME_S:  # the first frame, or after a stall: play from now
                due = now
            await asyncio.sleep(max(0.0, due - now))
            await self._push(frame)
            due += FRAME_S

    async def _push(self, frame: AvatarFrame) -> None:
        height, width = frame.image.shape[:2]
        await self.push_frame(OutputImageRawFrame(image=frame.image.tobytes(), size=(width, height), format="RGB"))
        if frame.speaking:
            if self._awaiting_first_frame:
                self._awaiting_first_frame = False
                await self.stop_ttfb_metrics()
            await self.push_frame(
                TTSAudioRawFrame(audio=frame.audio.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1)
            )
