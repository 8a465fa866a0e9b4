"""lipsync.agent — the avatar from a voice agent's side — against the real gateway and embedded Triton: the fMP4
decoded fragment by fragment equals the whole file decoded, and a conversation's frames come in order, each with
its audio, cut at once by an interrupt."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from gateway_helpers import read_wav_int16, running_gateway, stream
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.media import muxer
from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton
from lipsync import agent
from lipsync.agent import AvatarSession, FragmentDecoder, upload_portrait

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav)


@pytest.fixture(scope="module")
def gateway_url(triton_server: EmbeddedTriton) -> Iterator[str]:
    with running_gateway(Settings(triton_url=triton_server.grpc_url, demo=True)) as url:  # type: ignore[call-arg]
        yield url


def test_the_agent_skips_the_priming_the_muxer_writes() -> None:
    assert agent.AAC_PRIMING_SAMPLES == muxer.AAC_PRIMING_SAMPLES


def test_fragments_decoded_one_by_one_equal_the_whole_stream_decoded(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        avatar_id = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg)}).json()["avatar_id"]
        result = stream(client, avatar_id, speech[: 2 * 16000], engine="wav2lip")
    decoder = FragmentDecoder(result.init)
    frames = [frame for fragment in result.fragments for frame in decoder.decode(fragment)] + decoder.finish()
    assert [frame.number for frame in frames] == list(range(50))
    with av.open(io.BytesIO(result.mp4)) as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(result.mp4)) as container:
        whole = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    for frame, picture in zip(frames, pictures, strict=True):
        np.testing.assert_array_equal(frame.image, picture)
    heard = np.concatenate([frame.audio for frame in frames]).astype(np.float32) / 32768
    # The same decoder state across fragments, the priming skipped as the edit list says: the whole file's audio.
    np.testing.assert_allclose(heard, whole[: heard.size], atol=2 / 32768)
    assert heard.size == 50 * 640


def test_a_conversation_from_an_agent_is_in_order_and_an_interrupt_cuts_it_at_once(
    gateway_url: str, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    async def converse() -> tuple[list[agent.AvatarFrame], list[int], dict]:
        avatar_id = await upload_portrait(gateway_url, astronaut_jpeg)
        frames: list[agent.AvatarFrame] = []
        cut: list[int] = []
        url = gateway_url.replace("http://", "ws://")
        async with AvatarSession.connect(url, avatar_id, options={"engine": "wav2lip"}) as avatar:
            await avatar.utterance("first")
            await avatar.speak(speech[: 3 * 16000])
            async for frame in avatar.frames():
                frames.append(frame)
                if sum(f.speaking for f in frames) == 20 and not cut:
                    cut.append(frame.number)
                    await avatar.interrupt()
                if len(cut) == 1 and frame.number >= cut[0] + 25:  # a second of idling after it
                    await avatar.end()
                    cut.append(frame.number)
            assert avatar.end_message is not None
            return frames, cut, avatar.end_message

    frames, cut, end = asyncio.run(converse())
    numbers = [frame.number for frame in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    interrupted_at = cut[0]
    after = [frame for frame in frames if frame.number > interrupted_at]
    assert after and not any(frame.speaking for frame in after)  # not one speaking frame after the interrupt
    before = [frame for frame in frames if frame.number <= interrupted_at]
    assert numbers[: len(before)] == list(range(len(before)))  # nothing lost before it
    assert sum(frame.speaking for frame in before) == 20
    assert end["frames"] >= numbers[-1] + 1
