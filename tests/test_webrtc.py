"""WebRTC sessions (``POST /v1/webrtc/offer``) against the real gateway and embedded Triton, with aiortc as the
client (what an agent process runs): the offer's refusals, the data-channel protocol, frames and audio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from gateway_helpers import read_wav_int16, running_gateway
from webrtc_client import Peer, video_codec

from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton
from lipsync.audio import SAMPLES_PER_VIDEO_FRAME

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def gateway_url(triton_server: EmbeddedTriton) -> Iterator[str]:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True, max_sessions_per_client=2)  # type: ignore[call-arg]
    with running_gateway(settings) as url:
        yield url


@pytest.fixture(scope="module")
def avatar_id(gateway_url: str, astronaut_jpeg: bytes) -> str:
    response = httpx.post(f"{gateway_url}/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg)}, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["avatar_id"])


@pytest.fixture(scope="module")
def speech(spoken_wav) -> np.ndarray:  # type: ignore[no-untyped-def]
    return read_wav_int16(spoken_wav)


def test_a_clip_over_webrtc_delivers_every_frame_in_order_with_its_audio(
    gateway_url: str, avatar_id: str, speech: np.ndarray
) -> None:
    pcm = speech[: 2 * 16000]
    frames = pcm.size // SAMPLES_PER_VIDEO_FRAME

    async def session() -> tuple[Peer, dict]:
        peer = Peer(gateway_url)
        try:
            start = {"avatar_id": avatar_id, "options": {"engine": "wav2lip", "frame_code": True}}
            answer = await peer.connect(start)
            ready = await peer.message("ready")
            assert ready["mime_type"] == "webrtc" and ready["session_id"] == answer["session_id"]
            for piece in range(0, pcm.size, 3200):
                peer.send(pcm[piece : piece + 3200].tobytes())
            peer.send({"type": "end"})
            end = await peer.message("end")
            await peer.frame_coded(end["frames"] - 1)  # `end` follows the last frame sent, not decoded here
            return peer, answer
        finally:
            await peer.close()

    peer, answer = asyncio.run(session())
    assert video_codec(answer["sdp"]) == "H264"  # aiortc offers both: H.264 is preferred
    end = peer.got.of_type("end")[0]
    assert end["frames"] == frames
    codes = [code for code in peer.got.codes if code is not None]
    # Every frame, in order; a late chunk shows as its predecessor repeated (a freeze), never as a gap.
    assert sorted(set(codes)) == list(range(frames)), codes
    assert codes == sorted(codes)
    assert not any(m["type"] == "error" for m in peer.got.messages), peer.got.messages
    heard = peer.got.audio_samples()
    assert heard.size >= pcm.size * peer.got.audio_rate // 16000  # the speech, and silence around it
    assert np.abs(heard.astype(np.int32)).max() > 1000  # the speech came through (Opus, 48 kHz)
