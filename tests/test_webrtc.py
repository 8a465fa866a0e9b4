"""WebRTC sessions (``POST /v1/webrtc/offer``) against the real gateway and embedded Triton, with aiortc as the
client (what an agent process runs): the offer's refusals, the data-channel protocol, frames and audio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaPlayer
from gateway_helpers import read_wav_int16, running_gateway, wav_bytes
from video_helpers import clip_bytes, moving_face
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


def upload(url: str, image: bytes) -> str:
    response = httpx.post(f"{url}/v1/avatars", files={"image": ("a.jpg", image)}, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["avatar_id"])


@pytest.fixture(scope="module")
def avatar_id(gateway_url: str, astronaut_jpeg: bytes) -> str:
    return upload(gateway_url, astronaut_jpeg)


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
            await peer.end()
            return peer, answer
        finally:
            await peer.close()

    peer, answer = asyncio.run(session())
    assert video_codec(answer["sdp"]) == "H264"  # aiortc offers both: H.264 is preferred
    end = peer.got.of_type("end")[0]
    assert end["frames"] == frames
    # One stats message a render chunk: the first of 2 frames, then WebRTC's default chunks of 4 (not the 8 of
    # /ws/stream), since an interrupt cuts at a chunk's start.
    assert len(peer.got.of_type("stats")) == 1 + -(-(frames - 2) // 4)
    codes = [code for code in peer.got.codes if code is not None]
    # Every frame, in order; a late chunk shows as its predecessor repeated (a freeze), never as a gap.
    assert sorted(set(codes)) == list(range(frames)), codes
    assert codes == sorted(codes)
    assert not any(m["type"] == "error" for m in peer.got.messages), peer.got.messages
    heard = peer.got.audio_samples()
    assert heard.size >= pcm.size * peer.got.audio_rate // 16000  # the speech, and silence around it
    assert np.abs(heard.astype(np.int32)).max() > 1000  # the speech came through (Opus, 48 kHz)


def test_a_video_avatar_plays_over_webrtc(gateway_url: str, speech: np.ndarray) -> None:
    clip = clip_bytes(moving_face(12))
    response = httpx.post(f"{gateway_url}/v1/avatars", files={"video": ("c.mp4", clip)}, timeout=120)
    assert response.status_code == 200 and response.json()["kind"] == "video", response.text
    pcm = speech[:16000]

    async def session() -> Peer:
        peer = Peer(gateway_url)
        try:
            start = {"avatar_id": response.json()["avatar_id"], "options": {"engine": "wav2lip", "frame_code": True}}
            await peer.connect(start)
            await peer.message("ready")
            peer.send(pcm.tobytes())
            await peer.end()
            return peer
        finally:
            await peer.close()

    peer = asyncio.run(session())
    assert peer.got.of_type("end")[0]["frames"] == 25
    assert sorted({code for code in peer.got.codes if code is not None}) == list(range(25))
    assert peer.got.video_size == (384, 384)


def active_sessions(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    line = next(line for line in text.splitlines() if line.startswith("lipsync_active_sessions "))
    return float(line.split()[1])


def test_offers_are_refused_in_words(gateway_url: str, avatar_id: str) -> None:
    async def refusals() -> list[httpx.Response]:
        peer = Peer(gateway_url)
        try:
            good = {"avatar_id": avatar_id}
            answers = [
                await peer.post_offer(good, sdp="v=0\r\nm=video notaport UDP/TLS/RTP/SAVPF 96\r\n"),
                await peer.post_offer({"avatar_id": "f" * 64}),
                await peer.post_offer({"avatar_id": avatar_id, "options": {"engine": "nope"}}),
                await peer.post_offer({**good, "audio": {"format": "file"}}),
            ]
            audio_only = RTCPeerConnection()
            audio_only.addTransceiver("audio", direction="recvonly")
            await audio_only.setLocalDescription(await audio_only.createOffer())
            answers.append(await peer.post_offer(good, sdp=audio_only.localDescription.sdp))
            await audio_only.close()
            return answers
        finally:
            await peer.close()

    bad_sdp, unknown, bad_engine, file_audio, no_video = asyncio.run(refusals())
    assert bad_sdp.status_code == 400 and bad_sdp.json()["error"]["code"] == "bad_message"
    assert bad_sdp.json()["error"]["message"] == "The SDP offer could not be used: it is malformed."
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_avatar"
    assert bad_engine.status_code == 400 and "options" in bad_engine.json()["error"]["message"]
    assert file_audio.status_code == 400 and "pcm_s16le" in file_audio.json()["error"]["message"]
    assert no_video.status_code == 400 and "no video" in no_video.json()["error"]["message"]
    assert active_sessions(gateway_url) == 0  # no refusal kept its slot


def test_the_token_guards_offers(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True, auth_token="a-long-enough-s3cret")  # type: ignore[call-arg]
    with running_gateway(settings) as url:

        async def offer(token: str | None) -> httpx.Response:
            peer = Peer(url, token=token)
            try:
                return await peer.post_offer({"avatar_id": "0" * 64})
            finally:
                await peer.close()

        assert asyncio.run(offer(None)).status_code == 401
        assert asyncio.run(offer("wrong")).status_code == 401
        assert asyncio.run(offer("a-long-enough-s3cret")).json()["error"]["code"] == "unknown_avatar"  # past the token


def test_a_client_that_never_connects_or_leaves_frees_its_slot(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        triton_url=triton_server.grpc_url, demo=True, max_sessions_per_client=1, start_timeout_s=2
    )
    with running_gateway(settings) as url:
        start = {"avatar_id": upload(url, astronaut_jpeg), "mode": "conversation", "options": {"engine": "wav2lip"}}

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            silent, second, gone = Peer(url), Peer(url), Peer(url)
            try:
                first = await silent.post_offer(start)  # never applies the answer: no connection
                refused = await second.post_offer(start)  # this client's one slot is taken
                await wait_until_no_sessions(url)  # the silent one's start deadline passed
                await gone.connect(start)
                await gone.message("ready")
                await gone.pc.close()  # vanishes mid-conversation
                await wait_until_no_sessions(url)
                return first, refused
            finally:
                for peer in (silent, second, gone):
                    await peer.close()

        first, refused = asyncio.run(scenario())
        assert first.status_code == 200
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "session_limit"


async def wait_until_no_sessions(url: str, timeout_s: float = 60) -> float:
    """Poll the metric until no session is active (the server frees slots on its own schedule)."""
    async with asyncio.timeout(timeout_s), httpx.AsyncClient() as client:
        while True:
            text = (await client.get(f"{url}/metrics")).text
            value = float(next(x for x in text.splitlines() if x.startswith("lipsync_active_sessions ")).split()[1])
            if value == 0:
                return value
            await asyncio.sleep(0.1)


def test_an_interrupt_over_webrtc_takes_back_the_frames_not_yet_played(
    gateway_url: str, avatar_id: str, speech: np.ndarray
) -> None:
    """The frames queued for the tracks but not begun are dropped with the rest: the cut is at most a chunk after
    the frame on screen (over the WebSocket it is up to `max_ahead_ms` later), and the numbering never skips."""

    async def session() -> tuple[Peer, int, int, int]:
        peer = Peer(gateway_url)
        try:
            start = {
                "avatar_id": avatar_id,
                "mode": "conversation",
                "options": {"engine": "wav2lip", "frame_code": True},
            }
            await peer.connect(start)
            await peer.message("ready")
            peer.send({"type": "utterance", "id": "answer"})
            peer.send(speech[: 3 * 16000].tobytes())
            await peer.frame_coded(25)
            shown = max(code for code in peer.got.codes if code is not None)
            sent = peer.got.of_type("stats")[-1]["frames"]
            peer.send({"type": "interrupt"})
            interrupted = await peer.message("interrupted")
            await peer.frame_coded(interrupted["next_frame"] + 10)
            peer.send({"type": "end"})
            await peer.message("end")
            return peer, sent, shown, interrupted["next_frame"]
        finally:
            await peer.close()

    peer, sent, shown, cut = asyncio.run(session())
    codes = [code for code in peer.got.codes if code is not None]
    # No frame skipped, none shown twice but as a freeze: the dropped frames were never sent.
    assert codes == sorted(codes) and sorted(set(codes)) == list(range(max(codes) + 1))
    # Frames already handed to the tracks were taken back (over the WebSocket the cut is at `sent` or later),
    # and the cut is within a chunk (4 frames) of the frame playing on the server, which trails the screen
    # here by the frames on the wire.
    assert shown <= cut < sent
    assert cut - shown <= 4 + 8


def test_the_clients_audio_track_is_heard_like_pcm(
    gateway_url: str, avatar_id: str, speech: np.ndarray, tmp_path: Path
) -> None:
    """A microphone as a browser sends it: an Opus track at 48 kHz, resampled by the server to 16 kHz."""
    wav = tmp_path / "two_seconds.wav"
    wav.write_bytes(wav_bytes(speech[: 2 * 16000]))

    async def session() -> Peer:
        player = MediaPlayer(str(wav))  # plays the file in real time, as a microphone would
        assert player.audio is not None
        finished = asyncio.Event()
        player.audio.on("ended", finished.set)
        peer = Peer(gateway_url, microphone=player.audio)
        try:
            await peer.connect({"avatar_id": avatar_id, "options": {"engine": "wav2lip", "frame_code": True}})
            await peer.message("ready")
            await asyncio.wait_for(finished.wait(), 30)
            await peer.end()
            return peer
        finally:
            await peer.close()

    peer = asyncio.run(session())
    end = peer.got.of_type("end")[0]
    assert 45 <= end["frames"] <= 52  # 2 s of audio, less what the codec's start-up and the ending cut off
    assert sorted({code for code in peer.got.codes if code is not None}) == list(range(end["frames"]))
    assert np.abs(peer.got.audio_samples().astype(np.int32)).max() > 1000
