"""AvatarMedia, the queue a WebRTC session's tracks play from: order, sync, freezes, bounds, and what an
interrupt can take back (no network: the tracks' side is called directly)."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest

from gateway.transport.webrtc_media import AUDIO_FRAME_SAMPLES, VIDEO_TICKS_PER_FRAME, AvatarMedia

SIDE = 16


def picture(number: int) -> np.ndarray:
    return np.full((SIDE, SIDE, 3), number % 256, np.uint8)


def chunk(first: int, count: int) -> tuple[int, list[np.ndarray], np.ndarray]:
    """Frames numbered ``first…`` whose audio samples carry their frame's number plus one (0 is silence)."""
    frames = [picture(first + i) for i in range(count)]
    audio = np.repeat(np.arange(first + 1, first + count + 1, dtype=np.int16), 640)
    return first, frames, audio


def test_frames_and_audio_leave_in_order_and_together_and_a_late_chunk_is_a_freeze() -> None:
    async def run() -> None:
        media = AvatarMedia(picture(255))
        assert media.next_frame()[0, 0, 0] == 255  # the portrait until the first frame
        assert not media.next_audio(320).any()  # and silence
        await media.put(*chunk(0, 2))
        shown, heard = [], []
        for _ in range(3):  # one frame more than queued
            shown.append(int(media.next_frame()[0, 0, 0]))
            heard.append(media.next_audio(640))
        assert shown == [0, 1, 1]  # the last frame repeated: a freeze, never a jump
        assert [set(a.tolist()) for a in heard] == [{1}, {2}, {0}]  # silence while starved
        await media.put(*chunk(2, 2))
        assert int(media.next_frame()[0, 0, 0]) == 2 and set(media.next_audio(640).tolist()) == {3}

    asyncio.run(run())


def test_an_interrupt_takes_back_the_chunks_not_begun() -> None:
    async def run() -> None:
        media = AvatarMedia(picture(255))
        for first in (0, 2, 10, 18):
            await media.put(*chunk(first, 2 if first == 0 else 8))
        media.next_frame()  # frame 0 on screen
        media.next_audio(320)
        assert media.cut_point(committed=26) == 2  # the first chunk not begun
        media.next_frame()
        media.next_frame()  # frame 2 begun
        assert media.cut_point(committed=26) == 10
        assert media.drop_from(10) == 16  # two chunks of 8
        assert media.cut_point(committed=10) == 10  # nothing left to take back: the session's own point
        with pytest.raises(ValueError, match="need"):
            await media.put(10, [picture(10)], np.zeros(100, np.int16))

    asyncio.run(run())


def test_the_queue_is_bounded_and_a_full_one_waits_for_the_tracks() -> None:
    async def run() -> None:
        media = AvatarMedia(picture(255), max_seconds=0.2)  # 5 frames
        assert media.max_frames == 5
        await media.put(*chunk(0, 5))
        waiting = asyncio.ensure_future(media.put(*chunk(5, 5)))
        await asyncio.sleep(0)  # let it try
        assert not waiting.done()
        media.next_frame()  # the tracks take one: room again
        await asyncio.wait_for(waiting, 5)
        big = AvatarMedia(np.zeros((1280, 1280, 3), np.uint8), max_bytes=8 << 20)
        assert big.max_frames == 2  # a large framing holds fewer frames

    asyncio.run(run())


def test_drained_once_finished_and_everything_played() -> None:
    async def run() -> None:
        media = AvatarMedia(picture(255))
        await media.put(*chunk(0, 1))
        media.finish(np.full(100, 7, np.int16))  # the tail after the last whole frame
        assert not media.drained.is_set()
        media.next_frame()
        media.next_audio(640)
        assert not media.drained.is_set()
        assert set(media.next_audio(100).tolist()) == {7}
        assert media.drained.is_set()

    asyncio.run(run())


def test_the_tracks_timestamps_are_25_fps_and_20_ms() -> None:
    async def run() -> None:
        media = AvatarMedia(picture(255))
        video = [await media.video.recv() for _ in range(2)]
        audio = [await media.audio.recv() for _ in range(2)]
        assert [f.pts for f in video] == [0, VIDEO_TICKS_PER_FRAME] and VIDEO_TICKS_PER_FRAME == 3600
        assert video[0].time_base == fractions.Fraction(1, 90_000)
        assert [f.pts for f in audio] == [0, AUDIO_FRAME_SAMPLES] and audio[0].samples == 320
        assert audio[0].sample_rate == 16_000

    asyncio.run(run())
