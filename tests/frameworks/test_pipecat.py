"""LipsyncVideoService in a Pipecat pipeline (Pipecat's own run_test), against the real gateway and Triton."""

from __future__ import annotations

import asyncio

import av
import numpy as np
from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test

from lipsync.integrations.pipecat_service import LipsyncVideoService

TTS_RATE = 24_000  # what TTS services commonly produce; the service resamples to 16 kHz


def tts_frames(pcm16k: np.ndarray) -> list[Frame]:
    """The sentence as a TTS service sends it: started, 20 ms chunks at 24 kHz, stopped."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=TTS_RATE)
    sound = av.AudioFrame.from_ndarray(pcm16k.reshape(1, -1), format="s16", layout="mono")
    sound.sample_rate = 16_000
    audio = np.concatenate(
        [f.to_ndarray().reshape(-1) for f in [*resampler.resample(sound), *resampler.resample(None)]]
    )
    step = TTS_RATE // 50
    chunks = [
        TTSAudioRawFrame(audio=audio[i : i + step].tobytes(), sample_rate=TTS_RATE, num_channels=1)
        for i in range(0, audio.size, step)
    ]
    return [TTSStartedFrame(), *chunks, TTSStoppedFrame()]


def test_an_utterance_comes_back_as_frames_at_25_fps_with_its_audio(
    gateway: tuple[str, str], sentence: np.ndarray
) -> None:
    url, avatar_id = gateway
    speech = sentence[: 2 * 16_000]
    service = LipsyncVideoService(url=url, avatar_id=avatar_id)
    down, _ = asyncio.run(run_test(service, frames_to_send=tts_frames(speech), start_timeout=30))
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert service.size is not None and all(f.size == service.size and f.format == "RGB" for f in images)
    # Every frame of speech came with its 40 ms of audio, and the speech is all there: in = out (±1 frame).
    assert all(f.sample_rate == 16_000 and len(f.audio) == 2 * 640 for f in audio)
    assert abs(len(audio) - speech.size / 640) <= 1
    out = np.concatenate([np.frombuffer(f.audio, np.int16) for f in audio])
    assert abs(out.size - speech.size) <= 640
    assert np.abs(out.astype(np.int32)).max() > 1000
    # Frames and audio alternate as they should play: each audio chunk right after its frame.
    for index, frame in enumerate(down):
        if isinstance(frame, TTSAudioRawFrame):
            assert isinstance(down[index - 1], OutputImageRawFrame)


class InterruptAfter(FrameProcessor):
    """Interrupts the bot (both ways, as Pipecat does when the user speaks) after ``count`` audio chunks."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.seen = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.seen += 1
            if self.seen == self.count:
                await self.broadcast_interruption()


def test_an_interruption_stops_the_frames_of_speech_at_once(gateway: tuple[str, str], sentence: np.ndarray) -> None:
    url, avatar_id = gateway
    speech = sentence[: 3 * 16_000]
    service = LipsyncVideoService(url=url, avatar_id=avatar_id)
    from pipecat.pipeline.pipeline import Pipeline

    pipeline = Pipeline([service, InterruptAfter(10)])
    down, _ = asyncio.run(run_test(pipeline, frames_to_send=tts_frames(speech), start_timeout=30))
    kinds = [type(f) for f in down]
    assert InterruptionFrame in kinds
    cut = kinds.index(InterruptionFrame)
    spoken_before = sum(kind is TTSAudioRawFrame for kind in kinds[:cut])
    spoken_after = sum(kind is TTSAudioRawFrame for kind in kinds[cut:])
    assert spoken_before == 10
    assert spoken_after <= 1  # at most the one being pushed as the interruption came
    assert sum(kind is OutputImageRawFrame for kind in kinds[cut:]) > 0  # the avatar idles on
