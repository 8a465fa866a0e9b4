"""The gateway against the real embedded Triton serving the reduced models."""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import decode_video, read_wav_int16, stream, wav_bytes
from PIL import Image
from skimage import data
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.media import framecode
from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton

pytestmark = pytest.mark.triton


def _settings(server: EmbeddedTriton, **overrides: object) -> Settings:
    return Settings(triton_url=server.grpc_url, demo=True, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTriton) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(triton_server))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def avatar_id(client: TestClient, astronaut_jpeg: bytes) -> str:
    response = client.post("/v1/avatars", files={"image": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    return str(response.json()["avatar_id"])


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav)[: 16000 * 2 + 123]  # 2 s of the sentence, not a whole frame at the end


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_readiness_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert "lipsync_active_sessions" in client.get("/metrics").text
    assert "/ws/stream" not in client.get("/openapi.json").text  # WebSockets are documented in docs/protocol.md
    assert "/v1/avatars" in client.get("/openapi.json").text


def test_avatar_is_found_and_cached_by_content(client: TestClient, astronaut_jpeg: bytes, avatar_id: str) -> None:
    again = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()
    assert again["avatar_id"] == avatar_id
    assert again["faces_seen"] == 1 and again["demo"] is True
    x0, y0, x1, y1 = again["box"]
    assert 0 <= x0 < x1 <= again["width"] and 0 <= y0 < y1 <= again["height"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (_png(data.coffee()), 422, "no_face_found"),
        (b"\x89PNG\r\n\x1a\n not really", 415, "unsupported_image"),
    ],
)
def test_bad_portraits_are_refused_in_words(client: TestClient, payload: bytes, status: int, code: str) -> None:
    response = client.post("/v1/avatars", files={"image": ("x.png", payload, "image/png")})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and len(error["message"]) > 20


def test_stream_gives_a_valid_fragmented_mp4(client: TestClient, avatar_id: str, speech: np.ndarray) -> None:
    result = stream(client, avatar_id, speech, piece=1111, chunk_frames=8, seed=5)
    expected_frames = speech.size // 640
    assert result.ready["demo"] is True and result.ready["seed"] == 5
    assert result.end is not None and result.end["frames"] == expected_frames
    frames, keyframes, pts, audio_seconds = decode_video(result.mp4)
    assert len(frames) == expected_frames
    assert abs(audio_seconds - speech.size / 16000) <= 1024 / 16000
    assert all(b > a for a, b in itertools.pairwise(pts))
    # Every fragment opens with a keyframe: a small first one (2 frames, a faster first frame), then chunks of 8.
    assert all(keyframes[i] for i in [0, *range(2, expected_frames, 8)])
    assert result.stats[0]["frames"] == 2 and result.stats[1]["frames"] == 10
    assert frames[0].shape[:2] == (result.ready["height"], result.ready["width"])
    assert result.stats and result.stats[-1]["frames"] == expected_frames
    assert result.stats[0]["first_fragment_ms"] > 0


def test_frame_code_numbers_every_frame_of_a_stream(client: TestClient, avatar_id: str, speech: np.ndarray) -> None:
    result = stream(client, avatar_id, speech, piece=1111, engine="wav2lip", frame_code=True)
    frames, _, _, _ = decode_video(result.mp4)
    assert [framecode.read(frame) for frame in frames] == list(range(speech.size // 640))
    plain, _, _, _ = decode_video(stream(client, avatar_id, speech[:6400], engine="wav2lip").mp4)
    assert all(framecode.read(frame) is None for frame in plain)


def test_lipsync_compatible_protocol(client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray) -> None:
    request = {
        "audio": base64.b64encode(wav_bytes(speech[:16000])).decode(),
        "image": base64.b64encode(astronaut_jpeg).decode(),
        "fps": 25,
        "pads": [0, 10, 0, 0],
        "img_size": 96,
        "batch_size": 16,
        "no_segmentation": True,
        "no_sr": True,
    }
    with client.websocket_connect("/ws/lipsync") as ws:
        ws.send_text(json.dumps(request))
        answer = ws.receive_json()
        assert answer["status"] == "success", answer
        frames, _, _, audio_seconds = decode_video(base64.b64decode(answer["video"]))
        assert len(frames) == 25 and abs(audio_seconds - 1.0) <= 1024 / 16000
        # Errors come back in the same protocol, and the connection keeps serving.
        ws.send_text(json.dumps({**request, "image": "%%% not base64 %%%"}))
        error = ws.receive_json()
        assert error["status"] == "error" and "base64" in error["message"]
        ws.send_text(json.dumps({**request, "image": base64.b64encode(_png(data.coffee())).decode()}))
        error = ws.receive_json()
        assert error["status"] == "error" and "No face" in error["message"]


def test_one_shot_http_api_returns_an_mp4(client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray) -> None:
    response = client.post(
        "/v1/lipsync",
        files={
            "image": ("a.jpg", astronaut_jpeg, "image/jpeg"),
            "audio": ("s.wav", wav_bytes(speech[:8000]), "audio/wav"),
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    frames, _, _, _ = decode_video(response.content)
    assert len(frames) == 12


def _expect_error(client: TestClient, messages: list[str | bytes], code: str, close_code: int) -> str:
    with client.websocket_connect("/ws/stream") as ws:
        for message in messages:
            if isinstance(message, bytes):
                ws.send_bytes(message)
            else:
                ws.send_text(message)
        while True:
            payload = ws.receive()
            if payload.get("text") and json.loads(payload["text"])["type"] == "error":
                error = json.loads(payload["text"])
                break
        assert error["code"] == code, error
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
        assert closed.value.code == close_code
        return str(error["message"])


def test_bad_stream_messages_end_only_their_session(client: TestClient, avatar_id: str, speech: np.ndarray) -> None:
    start = json.dumps({"type": "start", "avatar_id": avatar_id})
    assert "start" in _expect_error(client, ["{not json"], "bad_message", 4400)
    assert "binary" in _expect_error(client, [b"\x00\x01"], "bad_message", 4400)
    assert "pose" in _expect_error(
        client,
        [json.dumps({"type": "start", "avatar_id": avatar_id, "options": {"pose": "dance"}})],
        "bad_message",
        4400,
    )
    assert "upload" in _expect_error(
        client, [json.dumps({"type": "start", "avatar_id": "nope"})], "unknown_avatar", 4404
    )
    assert "end" in _expect_error(client, [start, json.dumps({"type": "start"})], "bad_message", 4400)
    file_start = json.dumps({"type": "start", "avatar_id": avatar_id, "audio": {"format": "file"}})
    assert "could not be read" in _expect_error(
        client, [file_start, b"definitely not audio" * 50, json.dumps({"type": "end"})], "unsupported_audio", 4415
    )
    # After all of that the server streams as before.
    assert stream(client, avatar_id, speech[:6400]).end == {"type": "end", "frames": 10, "duration": 0.4}
    assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]


def test_oversized_messages_and_sessions_over_the_limit(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    with TestClient(create_app(_settings(triton_server, max_portrait_bytes=4096))) as small:
        avatar = small.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
        assert avatar.status_code == 413 and "limit" in avatar.json()["error"]["message"]
    with TestClient(create_app(_settings(triton_server, max_message_bytes=64 * 1024, max_sessions=1))) as small:
        avatar_id = small.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()[
            "avatar_id"
        ]
        start = json.dumps({"type": "start", "avatar_id": avatar_id})
        assert "over the limit" in _expect_error(small, [start, bytes(70_000)], "too_large", 1009)
        with small.websocket_connect("/ws/stream") as first:
            first.send_text(start)
            assert first.receive_json()["type"] == "ready"
            assert "busy" in _expect_error(small, [start], "busy", 4503)


def test_a_client_that_vanishes_mid_stream_leaves_nothing_behind(
    client: TestClient, avatar_id: str, speech: np.ndarray
) -> None:
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "avatar_id": avatar_id}))
        assert ws.receive_json()["type"] == "ready"
        ws.receive_bytes()  # init segment
        ws.send_bytes(speech[:32000].astype("<i2").tobytes())  # 50 frames: chunk 0 and its 13-frame lookahead
        ws.receive_bytes()  # a first fragment arrived: the session is busy rendering the next ones
    # The socket is gone; the session's tasks are cancelled and its slot is free again.
    result = stream(client, avatar_id, speech[:3200])
    assert result.end is not None and result.end["frames"] == 5
    assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]
    assert client.portal is not None
    assert client.portal.call(_session_tasks) == []  # nothing of either session is still running


async def _session_tasks() -> list[str]:
    """Tasks in the app's event loop that belong to a streaming session (gateway.session.core)."""
    import asyncio

    return [
        repr(task.get_coro())
        for task in asyncio.all_tasks()
        if any(name in repr(task.get_coro()) for name in ("StreamSession", "run_together", "_receive_audio"))
    ]


TOKEN = "a-test-token-of-24-chars"


def test_access_token_and_origin_checks(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    settings = _settings(triton_server, auth_token=TOKEN, allowed_origins=["http://good.example"])
    with TestClient(create_app(settings)) as guarded:
        files = {"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}
        assert guarded.post("/v1/avatars", files=files).status_code == 401
        ok = guarded.post("/v1/avatars", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert guarded.get("/healthz").status_code == 200  # liveness stays open for probes
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            guarded.websocket_connect("/ws/stream", headers={"origin": "http://evil.example"}) as ws,
        ):
            ws.receive_json()
        assert refused.value.code == 4403
        with guarded.websocket_connect("/ws/stream", headers={"origin": "http://good.example"}) as ws:
            ws.send_text(json.dumps({"type": "start", "avatar_id": ok.json()["avatar_id"]}))
            error = ws.receive_json()
            assert error["code"] == "unauthorized"


def test_a_call_over_its_deadline_says_so(triton_server: EmbeddedTriton) -> None:
    import asyncio

    from gateway.errors import InferenceUnavailable
    from gateway.metrics import Metrics
    from gateway.triton.client import TritonClient

    async def slow_render() -> None:
        client = TritonClient(triton_server.grpc_url, timeout_s=0.01, metrics=Metrics())
        k = 8
        rng = np.random.default_rng(0)
        try:
            await client.infer(
                "render",
                {
                    "window": rng.standard_normal((k, 70, 27)).astype(np.float32),
                    "kp_canonical": rng.standard_normal((k, 15, 3)).astype(np.float32),
                    "source_image": rng.random((k, 3, 256, 256), dtype=np.float32),
                    "kp_source": rng.standard_normal((k, 15, 3)).astype(np.float32),
                },
                ["face"],
            )
        finally:
            await client.close()

    with pytest.raises(InferenceUnavailable, match=r"did not finish 'render' within 0\.01 s"):
        asyncio.run(slow_render())


def test_stream_with_the_wav2lip_engine(client: TestClient, avatar_id: str, speech: np.ndarray) -> None:
    sadtalker = stream(client, avatar_id, speech[:6400], chunk_frames=4)
    wav2lip = stream(client, avatar_id, speech, piece=1111, chunk_frames=4, engine="wav2lip")
    assert wav2lip.ready["engine"] == "wav2lip" and sadtalker.ready["engine"] == "sadtalker"
    # A Wav2Lip frame waits for ≈ 0.25 s of audio after it, SadTalker's for ≈ 0.65 s.
    assert wav2lip.ready["model_lookahead_ms"] < 300 < 600 < sadtalker.ready["model_lookahead_ms"]
    assert wav2lip.ready["lookahead_ms"] < sadtalker.ready["lookahead_ms"] - 300
    assert wav2lip.end is not None and wav2lip.end["frames"] == speech.size // 640
    frames, keyframes, _, _ = decode_video(wav2lip.mp4)
    assert len(frames) == speech.size // 640 and all(keyframes[i] for i in [0, *range(2, len(frames), 4)])
    message = _expect_error(
        client,
        [json.dumps({"type": "start", "avatar_id": avatar_id, "options": {"engine": "wav2lip", "pose": "audio"}})],
        "bad_message",
        4400,
    )
    assert "pose applies to the sadtalker engine" in message
