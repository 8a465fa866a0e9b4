"""LipsyncVideoGenerator as LiveKit's AvatarRunner drives it (push_audio, clear_buffer, iteration), against the
real gateway, without a LiveKit server (the room is only where the runner publishes what the generator yields)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd

from lipsync.integrations.livekit_avatar import LipsyncVideoGenerator

AGENT_RATE = 24_000  # LiveKit's TTS output rate, commonly; the generator resamples to 16 kHz


def agent_audio(pcm16k: np.ndarray) -> list[rtc.AudioFrame]:
    """The speech as an agent's audio output sends it: 10 ms frames at 24 kHz (a plain repeat-and-drop resample is
    enough to carry speech here; the generator's own resampler is what is under test)."""
    upsampled = np.repeat(pcm16k, 3)[::2]  # 16 kHz → 24 kHz
    step = AGENT_RATE // 100
    return [
        rtc.AudioFrame(upsampled[i : i + step].tobytes(), AGENT_RATE, 1, len(upsampled[i : i + step]))
        for i in range(0, upsampled.size - step + 1, step)
    ]


async def collect(generator: LipsyncVideoGenerator, until: Any) -> list[Any]:
    out: list[Any] = []
    async for item in generator:
        out.append(item)
        if until(out):
            break
    return out


def test_a_segment_comes_back_as_frames_with_its_audio_then_its_end(
    gateway: tuple[str, str], sentence: np.ndarray
) -> None:
    url, avatar_id = gateway
    speech = sentence[: 2 * 16_000]

    async def run() -> tuple[list[Any], tuple[int, int]]:
        async with LipsyncVideoGenerator.connect(url, avatar_id) as generator:
            for frame in agent_audio(speech):
                await generator.push_audio(frame)
            await generator.push_audio(AudioSegmentEnd())
            items = await asyncio.wait_for(
                collect(generator, lambda out: isinstance(out[-1], AudioSegmentEnd)), timeout=120
            )
            return items, generator.size

    items, size = asyncio.run(run())
    video = [i for i in items if isinstance(i, rtc.VideoFrame)]
    audio = [i for i in items if isinstance(i, rtc.AudioFrame)]
    assert all((v.width, v.height) == size and v.type == rtc.VideoBufferType.RGB24 for v in video)
    assert all(a.sample_rate == 16_000 and a.samples_per_channel == 640 for a in audio)
    assert abs(len(audio) - speech.size / 640) <= 1  # frames = audio duration × 25 (±1)
    assert isinstance(items[-1], AudioSegmentEnd) and isinstance(items[-2], rtc.AudioFrame)  # after its last audio
    out = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio])
    assert abs(out.size - speech.size) <= 640 and np.abs(out.astype(np.int32)).max() > 1000
    for index, item in enumerate(items):  # each audio frame right after its video frame
        if isinstance(item, rtc.AudioFrame):
            assert isinstance(items[index - 1], rtc.VideoFrame)


def test_clear_buffer_stops_the_speech_at_once(gateway: tuple[str, str], sentence: np.ndarray) -> None:
    url, avatar_id = gateway
    speech = sentence[: 3 * 16_000]

    async def run() -> tuple[list[Any], list[Any]]:
        async with LipsyncVideoGenerator.connect(url, avatar_id) as generator:
            for frame in agent_audio(speech):
                await generator.push_audio(frame)
            await generator.push_audio(AudioSegmentEnd())
            before = await collect(generator, lambda out: sum(isinstance(i, rtc.AudioFrame) for i in out) == 10)
            await generator.clear_buffer()
            after = await collect(generator, lambda out: len(out) >= 40)  # 40 frames of idling
            return before, after

    before, after = asyncio.run(run())
    assert sum(isinstance(i, rtc.AudioFrame) for i in before) == 10
    assert not any(isinstance(i, rtc.AudioFrame | AudioSegmentEnd) for i in after)
    assert all(isinstance(i, rtc.VideoFrame) for i in after)
