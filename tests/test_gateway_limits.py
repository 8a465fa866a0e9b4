"""What an outside probe found (issue 10): hostile or idle clients, bad audio, limits, origins, the API's own
description — each against the real gateway and the real embedded Triton (reduced models).

Time limits are set to fractions of a second here; the tests wait on the server's own deadline, never on a
sleep of their own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from gateway_helpers import ManualClock, running_gateway, wav_bytes
from PIL import Image
from skimage import data
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from gateway.app import create_app
from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton

pytestmark = pytest.mark.triton


def _settings(server: EmbeddedTriton, **overrides: Any) -> Settings:
    return Settings(triton_url=server.grpc_url, demo=True, **overrides)


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A 32-bit IEEE-float mono WAV (format tag 3), which can carry NaN and infinity."""
    payload = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTriton) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(triton_server, start_timeout_s=0.5, idle_timeout_s=1.0))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def avatar_id(client: TestClient, astronaut_jpeg: bytes) -> str:
    response = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    return str(response.json()["avatar_id"])


def _error_and_close(ws: Any) -> tuple[dict[str, Any], int]:
    """The JSON error a /ws/* socket sends, then the close code it closes with."""
    while True:
        message = ws.receive()
        if message.get("text"):
            payload = json.loads(message["text"])
            if payload.get("type") == "error" or payload.get("status") == "error":
                break
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_bytes()
    return payload, closed.value.code


# ------------------------------------------------------------------------------------------------ bad audio


def test_non_finite_audio_is_unsupported_audio_everywhere(
    client: TestClient, avatar_id: str, astronaut_jpeg: bytes
) -> None:
    samples = np.zeros(16000, np.float32)
    samples[100], samples[200] = np.nan, np.inf
    wav = float_wav(samples)

    response = client.post(
        "/v1/lipsync",
        files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg"), "audio": ("nan.wav", wav, "audio/wav")},
    )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_audio"
    assert "not numbers" in response.json()["error"]["message"]

    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "avatar_id": avatar_id, "audio": {"format": "file"}}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(wav)
        ws.send_text(json.dumps({"type": "end"}))
        error, code = _error_and_close(ws)
    assert error["code"] == "unsupported_audio" and "not numbers" in error["message"] and code == 4415

    request = {"audio": base64.b64encode(wav).decode(), "image": base64.b64encode(astronaut_jpeg).decode()}
    with client.websocket_connect("/ws/lipsync") as ws:
        ws.send_text(json.dumps(request))
        answer = ws.receive_json()
        assert answer == {"status": "error", "message": answer["message"]} and "not numbers" in answer["message"]
        ws.send_bytes(b"\x00binary")  # still serving, and still in its own format
        assert ws.receive_json()["status"] == "error"
    assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- idle clients


@pytest.mark.parametrize(("path", "format_key"), [("/ws/stream", "code"), ("/ws/lipsync", "status")])
def test_a_socket_that_never_speaks_is_closed_at_the_start_deadline(
    client: TestClient, path: str, format_key: str
) -> None:
    with client.websocket_connect(path) as ws:
        error, code = _error_and_close(ws)
    assert code == 4408 and "first message" in error["message"]
    assert format_key in error and ("type" in error) == (path == "/ws/stream")


def test_a_session_without_audio_is_closed_and_frees_its_slot(client: TestClient, avatar_id: str) -> None:
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "avatar_id": avatar_id}))
        ready = ws.receive_json()
        assert ready["limits"]["idle_timeout_s"] == 1.0
        ws.receive_bytes()  # init segment
        ws.send_bytes(np.zeros(3200, "<i2").tobytes())  # some audio, then silence from the client
        error, code = _error_and_close(ws)
    assert error["code"] == "idle_timeout" and code == 4408 and "end" in error["message"]
    assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]


def test_a_clip_session_trickling_audio_ends_at_the_session_limit(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes
) -> None:
    """A few samples just inside the idle limit, for ever, must not hold a slot: the session's length counts
    wall time too (on a clock the test moves)."""
    settings = _settings(triton_server, idle_timeout_s=30.0, max_session_seconds=5.0)
    with TestClient(create_app(settings)) as client:
        clock = ManualClock()
        client.app.state.ctx.clock = clock  # type: ignore[attr-defined]
        response = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps({"type": "start", "avatar_id": response.json()["avatar_id"]}))
            assert ws.receive_json()["type"] == "ready"
            ws.send_bytes(np.zeros(160, "<i2").tobytes())  # 10 ms of audio…
            clock.advance(5.0)  # …over the session's whole allowance of wall time
            ws.send_bytes(np.zeros(160, "<i2").tobytes())
            error, code = _error_and_close(ws)
        assert error["code"] == "too_large" and "of time since it started" in error["message"] and code == 1009
        assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]


def _start(stack: contextlib.ExitStack, url: str, avatar_id: str, source: str) -> Any:
    """A /ws/stream session from a given loopback source address, its `start` sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), source_address=(source, 0))
    ws = stack.enter_context(connect(url.replace("http://", "ws://") + "/ws/stream", sock=sock, open_timeout=30))
    ws.send(json.dumps({"type": "start", "avatar_id": avatar_id}))
    return ws


def test_one_client_cannot_take_every_slot(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    settings = _settings(triton_server, max_sessions=3, max_sessions_per_client=2)
    with running_gateway(settings) as url:
        request = urllib.request.Request(f"{url}/v1/avatars", astronaut_jpeg, {"content-type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=120) as response:
            avatar_id = json.loads(response.read())["avatar_id"]
        stack = contextlib.ExitStack()
        with stack:
            first, second = (_start(stack, url, avatar_id, "127.0.0.1") for _ in range(2))
            for ws in (first, second):
                assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            third = _start(stack, url, avatar_id, "127.0.0.1")
            refused = json.loads(third.recv(timeout=30))
            assert refused["code"] == "session_limit" and "2 session" in refused["message"]
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            with urllib.request.urlopen(f"{url}/readyz", timeout=30) as response:
                assert json.loads(response.read())["status"] == "ready"  # one slot is free
            other = _start(stack, url, avatar_id, "127.0.0.2")  # another client still gets the free slot
            assert json.loads(other.recv(timeout=30))["type"] == "ready"
            # Every slot taken: not ready for new sessions, so a load balancer sends them elsewhere.
            with pytest.raises(urllib.error.HTTPError) as full:
                urllib.request.urlopen(f"{url}/readyz", timeout=30)
            body = json.loads(full.value.read())
            full.value.close()
            assert full.value.code == 503 and body == {"status": "full", "reason": "all 3 session slots are taken"}


# --------------------------------------------------------------------------------------- the HTTP server


def test_a_partial_http_header_does_not_hold_a_connection(triton_server: EmbeddedTriton) -> None:
    with running_gateway(_settings(triton_server, header_timeout_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            started = time.monotonic()
            assert sock.recv(1024) == b"", "the server should close the connection"
            assert time.monotonic() - started < 20
        # A complete request is answered, and says the connection ends with it (one request per connection).
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()


def test_a_trickled_body_gets_408_and_loses_its_connection(triton_server: EmbeddedTriton) -> None:
    with running_gateway(_settings(triton_server, body_timeout_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        trickles = {  # a raw body, and a form (parsed by the framework before the handler runs)
            "/v1/avatars": b"Content-Type: image/jpeg",
            "/v1/lipsync": b"Content-Type: multipart/form-data; boundary=b",
        }
        for path, content_type in trickles.items():
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                head = b"POST %s HTTP/1.1\r\nHost: localhost\r\n%s\r\nContent-Length: 100000\r\n\r\n" % (
                    path.encode(),
                    content_type,
                )
                sock.sendall(head + b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\n" + bytes(1000))
                answer = b""
                while chunk := sock.recv(4096):  # ends when the server closes the connection
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), (path, answer)
            error = json.loads(body)["error"]
            assert error["code"] == "body_timeout" and "0.5 s" in error["message"]
        # The same server still takes a body that arrives in time.
        request = urllib.request.Request(url + "/v1/avatars", data=b"not an image", method="POST")
        request.add_header("Content-Type", "image/jpeg")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        refused.value.close()  # the error holds the response and its socket
        assert refused.value.code == 415


def test_a_websocket_message_over_the_limit_gets_the_documented_error(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes
) -> None:
    settings = _settings(triton_server, max_message_bytes=64 * 1024)
    with running_gateway(settings) as url:
        with connect(url.replace("http://", "ws://") + "/ws/stream", open_timeout=30) as ws:
            ws.send(bytes(70_000))  # over the app's limit, under the transport's
            error = json.loads(ws.recv(timeout=30))
            assert error["code"] == "too_large" and "65,536" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# ---------------------------------------------------------------------------------- the API as documented


def test_a_raw_image_body_makes_the_same_avatar(client: TestClient, astronaut_jpeg: bytes, avatar_id: str) -> None:
    raw = client.post("/v1/avatars", content=astronaut_jpeg, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["avatar_id"] == avatar_id
    wrong = client.post("/v1/avatars", content=b"{}", headers={"content-type": "application/json"})
    assert wrong.status_code == 415 and "multipart" in wrong.json()["error"]["message"]


def test_a_portrait_over_the_limit_is_image_too_large(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    with TestClient(create_app(_settings(triton_server, max_portrait_bytes=4096))) as small:
        for response in (
            small.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}),
            small.post("/v1/avatars", content=astronaut_jpeg, headers={"content-type": "image/jpeg"}),
        ):
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "image_too_large"
            assert "4,096" in response.json()["error"]["message"]


def test_openapi_declares_the_error_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    avatars = spec["paths"]["/v1/avatars"]["post"]
    for status in ("400", "413", "415", "422", "503"):
        schema = avatars["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert set(avatars["requestBody"]["content"]) >= {"multipart/form-data", "image/jpeg", "image/png"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "503" in spec["paths"]["/v1/lipsync"]["post"]["responses"]


def test_docs_work_offline_and_info_tells_the_page_what_it_needs(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    scripts = [part.split('"')[1] for part in page.text.split("src=")[1:]]
    assert scripts and all(src.startswith("http://testserver/") for src in scripts), scripts
    assert "cdn" not in page.text
    assert client.get(scripts[0]).status_code == 200
    info = client.get("/v1/info").json()
    assert info["demo"] is True and "sadtalker" in info["engines"]
    assert info["limits"]["max_sessions_per_client"] == 2 and set(info["framings"]) == {"portrait", "face"}


# ------------------------------------------------------------------------------------------------ origins


def test_browsers_may_only_call_from_our_own_page_by_default(client: TestClient, astronaut_jpeg: bytes) -> None:
    for origin in ("http://evil.example", "null"):
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/ws/stream", headers={"origin": origin}) as ws,
        ):
            ws.receive_json()
        assert refused.value.code == 4403, origin
        posted = client.post(
            "/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}, headers={"origin": origin}
        )
        assert posted.status_code == 403 and posted.json()["error"]["code"] == "origin_not_allowed"
    # Our own page (the Origin names the host it was served from) and non-browser clients (no Origin) may.
    own = client.post(
        "/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}, headers={"origin": "http://testserver"}
    )
    assert own.status_code == 200
    with client.websocket_connect("/ws/stream", headers={"origin": "http://testserver"}) as ws:
        ws.send_text(json.dumps({"type": "start", "avatar_id": "nope"}))
        assert ws.receive_json()["code"] == "unknown_avatar"


def test_allowed_origins_widen_the_default(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> None:
    settings = _settings(triton_server, allowed_origins="https://app.example, http://localhost:3000")
    with TestClient(create_app(settings)) as widened:
        files = {"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}
        assert widened.post("/v1/avatars", files=files, headers={"origin": "https://app.example"}).status_code == 200
        assert widened.post("/v1/avatars", files=files, headers={"origin": "https://other.example"}).status_code == 403


# ------------------------------------------------------------------------------------------------- memory


def _big_portrait(side: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BICUBIC).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_large_portrait_is_framed_small_and_costs_little_memory(client: TestClient) -> None:
    created = client.post("/v1/avatars", files={"image": ("big.jpg", _big_portrait(2600), "image/jpeg")})
    assert created.status_code == 200, created.text
    avatar = created.json()
    assert (avatar["width"], avatar["height"]) == (2600, 2600)
    assert avatar["framings"] == {"portrait": {"width": 1280, "height": 1280}, "face": {"width": 512, "height": 512}}
    state = client.app.state.ctx.avatars.peek(avatar["avatar_id"])  # type: ignore[attr-defined]
    assert state.nbytes < 8 * 2**20  # the 20 MB photo itself is not kept
    for framing, size in (("face", 512), ("portrait", 1280)):
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(
                json.dumps({"type": "start", "avatar_id": avatar["avatar_id"], "options": {"framing": framing}})
            )
            ready = ws.receive_json()
            assert (ready["width"], ready["height"]) == (size, size), framing
            ws.send_text(json.dumps({"type": "end"}))


def test_the_one_shot_answer_has_the_requested_framing(client: TestClient) -> None:
    from gateway_helpers import decode_video

    response = client.post(
        "/v1/lipsync",
        params={"framing": "face"},
        files={
            "image": ("big.jpg", _big_portrait(2600), "image/jpeg"),
            "audio": ("s.wav", wav_bytes(np.zeros(6400, np.int16)), "audio/wav"),
        },
    )
    assert response.status_code == 200, response.text
    frames = decode_video(response.content)[0]
    assert len(frames) == 10 and frames[0].shape == (512, 512, 3)


def test_the_avatar_cache_keeps_within_its_byte_budget(triton_server: EmbeddedTriton) -> None:
    portraits = [_big_portrait(side) for side in (600, 640, 680)]
    one_avatar_mb = 3 * 600 * 600 * 3 / 2**20  # a portrait framing of about this size, and a bit more
    with TestClient(create_app(_settings(triton_server, avatar_cache_mb=one_avatar_mb))) as small:
        ids = []
        for jpeg in portraits:
            response = small.post("/v1/avatars", files={"image": ("p.jpg", jpeg, "image/jpeg")})
            assert response.status_code == 200, response.text
            ids.append(response.json()["avatar_id"])
        store = small.app.state.ctx.avatars  # type: ignore[attr-defined]
        assert store.bytes_used <= store.capacity_bytes
        assert 1 <= len(store) < len(portraits)
        assert store.peek(ids[-1]) is not None and store.peek(ids[0]) is None  # the oldest went first
        with small.websocket_connect("/ws/stream") as ws:  # an evicted avatar is reported, not crashed on
            ws.send_text(json.dumps({"type": "start", "avatar_id": ids[0]}))
            assert ws.receive_json()["code"] == "unknown_avatar"
