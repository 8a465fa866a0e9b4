"""Safe to expose (issue 18), the gateway's side: nothing open by default, no client can hold or exhaust the
server, and the checks come before the work. Against the real gateway (uvicorn) and the real embedded Triton.

Clients that stop reading are real sockets that never call ``recv`` after the handshake; the tests wait on the
server's own action (the connection reset), never on a sleep of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import select
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from gateway_helpers import ManualClock, running_gateway, wav_bytes
from PIL import Image
from pydantic import ValidationError
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.uri import parse_uri

from gateway.__main__ import main
from gateway.app import create_app
from gateway.avatars.store import AvatarStore, Turns
from gateway.errors import PreparationBusy
from gateway.settings import Settings
from gateway.transport.access import RedactTokens, client_group, host_allowed
from gateway.triton.server import EmbeddedTriton

TOKEN = "0123456789abcdef-test-token"


def _settings(server: EmbeddedTriton, **overrides: Any) -> Settings:
    return Settings(triton_url=server.grpc_url, demo=True, **overrides)


def _metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """The sum of a metric's samples on /metrics (0 when it has none yet)."""
    request = urllib.request.Request(f"{url}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{re.escape(name)}(\{{| )", line)
    )


def _post_avatar(url: str, jpeg: bytes, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(
        f"{url}/v1/avatars", data=jpeg, headers={"Content-Type": "image/jpeg", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(json.loads(response.read())["avatar_id"])


@contextlib.contextmanager
def never_reading_socket(
    url: str, path: str, name: str | None = None
) -> Iterator[tuple[socket.socket, ClientProtocol]]:
    """A WebSocket client on a raw socket with a tiny receive buffer, that reads the handshake and nothing else
    (``name``: the host it says it is calling, instead of the address it connects to)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small TCP window
    sock.settimeout(30)
    try:
        sock.connect((host, int(port)))
        protocol = ClientProtocol(parse_uri(f"ws://{name or host}:{port}{path}"))
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        response = b""
        while not response.endswith(b"\r\n\r\n"):  # the answer's head only, byte by byte
            response += sock.recv(1)
        protocol.receive_data(response)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        yield sock, protocol
    finally:
        sock.close()


def _send(sock: socket.socket, protocol: ClientProtocol, *messages: str | bytes) -> None:
    for message in messages:
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
    sock.sendall(b"".join(protocol.data_to_send()))


def _wait_for_reset(sock: socket.socket, seconds: float) -> bool:
    """Whether the server dropped the connection within ``seconds`` (without reading a byte of what it sent)."""
    poller = select.poll()
    poller.register(sock, 0)  # no events asked for: only hang-ups and errors are reported
    return bool(poller.poll(seconds * 1000))


# ------------------------------------------------------------------------------------------ 1. slow readers


@pytest.mark.triton
def test_a_client_that_stops_reading_is_cut_off_and_frees_its_slot(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes
) -> None:
    settings = _settings(triton_server, send_timeout_s=1.0, max_sessions_per_client=1)
    speech = (np.sin(np.arange(16000 * 12) / 9.0) * 8000).astype("<i2").tobytes()  # 12 s: far more than buffers
    with running_gateway(settings, send_buffer=16 * 1024) as url:
        avatar_id = _post_avatar(url, astronaut_jpeg)
        start = json.dumps({"type": "start", "avatar_id": avatar_id, "options": {"engine": "wav2lip"}})
        with never_reading_socket(url, "/ws/stream") as (sock, protocol):
            _send(sock, protocol, start, speech, json.dumps({"type": "end"}))
            assert _wait_for_reset(sock, 120), "the server kept a connection its client does not read"
        assert _metric(url, "lipsync_clients_cut_off_total") == 1
        # The reset came first; the session unwinds on the server's next turns (each request is one of them).
        assert any(_metric(url, "lipsync_active_sessions") == 0 for _ in range(50))
        with connect(f"{url.replace('http', 'ws')}/ws/stream") as ws:  # the same client may start again
            ws.send(start)
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"


def test_an_http_client_that_stops_reading_is_cut_off() -> None:
    """A large response (the API page's 1.6 MB script) to a client that never reads it: once the server's buffers
    to it are full for LIPSYNC_SEND_TIMEOUT_S, the connection is reset and counted; the server serves on."""
    settings = Settings(triton_url="127.0.0.1:1", demo=True, send_timeout_s=0.5)  # no Triton call is made
    with running_gateway(settings, send_buffer=16 * 1024) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small TCP window
            sock.settimeout(30)
            sock.connect((host, int(port)))
            sock.sendall(b"GET /swagger/swagger-ui-bundle.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _wait_for_reset(sock, 60), "the server kept a connection its client does not read"
        assert _metric(url, 'lipsync_clients_cut_off_total{kind="http"}') == 1
        with urllib.request.urlopen(f"{url}/swagger/swagger-ui-bundle.js", timeout=30) as response:
            assert len(response.read()) > 2**20  # so the reset was not for want of something to send


@pytest.mark.triton
def test_a_session_ends_at_its_absolute_cap_whatever_it_waits_on(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes
) -> None:
    """A conversation idles on the clock, waiting for speech that never comes: at its session limit plus the
    time to finish it is closed, its slot freed."""
    clock = ManualClock()
    settings = _settings(triton_server, max_conversation_seconds=60.0, drain_timeout_s=5.0)
    with TestClient(create_app(settings, clock=clock)) as client:
        avatar_id = client.post("/v1/avatars", content=astronaut_jpeg, headers={"content-type": "image/jpeg"})
        start = {"type": "start", "avatar_id": avatar_id.json()["avatar_id"], "mode": "conversation"}
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps({**start, "options": {"engine": "wav2lip"}}))
            assert ws.receive_json()["type"] == "ready"
            ws.receive_bytes()  # the init segment
            assert client.portal is not None
            client.portal.call(_advance, clock, 66.0)
            while (message := ws.receive()).get("text") is None or json.loads(message["text"])["type"] == "stats":
                pass  # idle frames sent before the cap
            error = json.loads(message["text"])
            assert error["code"] == "session_expired", error
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_bytes()
            assert closed.value.code == 4408
        assert client.app.state.ctx.slots.active == 0  # type: ignore[attr-defined]


async def _advance(clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    await asyncio.sleep(0)


async def _turns(count: int) -> None:
    """Let the event loop run ``count`` times: whatever a moved clock set off has happened after it."""
    for _ in range(count):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------ 2. nothing open by default


def test_a_reachable_address_needs_a_token_or_an_explicit_yes() -> None:
    with pytest.raises(ValidationError, match=r"LIPSYNC_AUTH_TOKEN.*LIPSYNC_ALLOW_ANONYMOUS"):
        Settings(host="0.0.0.0")
    with pytest.raises(ValidationError, match="LIPSYNC_AUTH_TOKEN"):
        Settings(host="::")
    assert Settings(host="0.0.0.0", auth_token=TOKEN).auth_token == TOKEN
    assert Settings(host="0.0.0.0", allow_anonymous=True).allow_anonymous
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert Settings(host=loopback).auth_token is None


@pytest.mark.parametrize("token", ["", "short", "15-characters!!"])
def test_a_short_token_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(auth_token=token)


def test_the_cli_refuses_an_open_address_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIPSYNC_HOST", "0.0.0.0")
    monkeypatch.delenv("LIPSYNC_AUTH_TOKEN", raising=False)
    with caplog.at_level(logging.ERROR):
        assert main(["serve"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("refusing to start: the gateway would listen on 0.0.0.0") and "openssl" in line


# ------------------------------------------------------------------------------ 3. checks before the work


@pytest.fixture(scope="module")
def guarded(triton_server: EmbeddedTriton) -> Iterator[str]:
    settings = _settings(
        triton_server, auth_token=TOKEN, max_portrait_bytes=2**20, max_video_bytes=2**20, max_message_bytes=2**20
    )
    with running_gateway(settings) as url:
        yield url


def _status(url: str, path: str, **headers: str) -> int:
    request = urllib.request.Request(f"{url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


@pytest.mark.triton
def test_every_route_needs_the_token_but_the_public_ones(guarded: str) -> None:
    for path in ("/healthz", "/v1/info", "/", "/index.html", "/app.js", "/style.css"):
        assert _status(guarded, path) == 200, path
    for path in ("/readyz", "/metrics", "/docs", "/openapi.json", "/no-such-route", "/v1/avatars/anything"):
        assert _status(guarded, path) == 401, path
        assert _status(guarded, path, Authorization=f"Bearer {TOKEN}") != 401, path
    # Only WebSockets may carry the token in the query (browsers cannot set their headers).
    assert _status(guarded, f"/readyz?token={TOKEN}") == 401


@pytest.mark.triton
def test_an_upload_without_the_token_is_refused_before_its_body_is_read(guarded: str) -> None:
    """The answer comes while the body is still being sent: nothing was parsed or spooled."""
    host, port = guarded.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/lipsync HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10000000\r\n\r\n--b\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401") and b"unauthorized" in answer


@pytest.mark.triton
def test_a_body_over_its_routes_limit_is_refused_as_it_streams(guarded: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Declared too large: refused before a byte of it is read.
    host, port = guarded.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/avatars HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: 999999999\r\n\r\n" % TOKEN.encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    # Sent without a length (chunked), counted as it comes: a form is cut off at its route's limit while it is
    # parsed, not spooled whole and measured afterwards (which said "The file is larger…"). The client is still
    # sending when the refusal is made (12 MiB: more than loopback buffers): it must still read the answer, not a
    # reset from a server that closed on its unread bytes.
    form = b"--b\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n" + bytes(12 * 2**20)
    request = urllib.request.Request(
        f"{guarded}/v1/lipsync",
        data=iter([form[i : i + 2**16] for i in range(0, len(form), 2**16)]),
        headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    body = json.loads(refused.value.read())
    refused.value.close()
    assert refused.value.code == 413 and body["error"]["code"] == "too_large", body
    assert body["error"]["message"].startswith("The request is over the limit of 1,048,576 bytes for the portrait")
    # Each refusal is counted under its own code (the form parser's failure is not a bad_message).
    assert _metric(guarded, 'lipsync_errors_total{code="too_large"}', auth) == 1
    assert _metric(guarded, 'lipsync_errors_total{code="image_too_large"}', auth) == 1
    assert _metric(guarded, 'lipsync_errors_total{code="bad_message"}', auth) == 0


@pytest.mark.triton
def test_the_token_never_reaches_the_logs(guarded: str) -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    keep = Keep()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.setLevel(logging.INFO)
    try:
        _status(guarded, f"/?token={TOKEN}")
        with connect(f"{guarded.replace('http', 'ws')}/ws/stream?token={TOKEN}") as ws:
            ws.send(json.dumps({"type": "start", "avatar_id": "nope"}))
            assert json.loads(ws.recv(timeout=30))["code"] == "unknown_avatar"
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(keep)
            logger.setLevel(level)
    assert any("token=REDACTED" in line for line in seen), seen
    assert not any(TOKEN in line for line in seen), seen


def test_the_redaction_keeps_the_rest_of_the_line() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("1.2.3.4", "GET", ""), None)
    record.args = ("1.2.3.4", "GET", f"/ws/stream?a=1&token={TOKEN}&b=2")
    RedactTokens().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /ws/stream?a=1&token=REDACTED&b=2"'


# ------------------------------------------------------------------------------------------ 4. WebSockets


@pytest.mark.triton
def test_per_message_deflate_is_off(guarded: str) -> None:
    """The server does not agree to compressed messages, so nothing small on the wire grows large in memory."""
    with connect(f"{guarded.replace('http', 'ws')}/ws/stream?token={TOKEN}", compression="deflate") as ws:
        assert ws.protocol.extensions == []


@pytest.mark.triton
def test_one_client_cannot_open_sockets_without_bound(triton_server: EmbeddedTriton) -> None:
    """Two sockets (the limit here) stay open doing nothing; the third is refused in words, with 4429."""
    with running_gateway(_settings(triton_server, max_sockets_per_client=2)) as http_url:
        url = f"{http_url.replace('http', 'ws')}/ws/stream"
        with connect(url), connect(url), connect(url) as third:
            assert json.loads(third.recv(timeout=30))["code"] == "socket_limit"
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429


def test_ipv6_clients_count_by_their_64() -> None:
    assert client_group("2001:db8:1:2:aaaa::1") == client_group("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_group("2001:db8:1:3::1") != client_group("2001:db8:1:2::1")
    assert client_group("192.0.2.7") == "192.0.2.7" != client_group("192.0.2.8")
    assert client_group("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4 on a dual-stack socket: not one /64 for all


# --------------------------------------------------------------------------------------- 5. bounded work


def test_portrait_preparation_queues_then_refuses() -> None:
    async def scenario() -> tuple[int, int]:
        turns = Turns(at_once=1, waiting=1)
        release = asyncio.Event()
        started = 0

        async def prepare() -> None:
            nonlocal started
            async with turns:
                started += 1
                await release.wait()

        first, second = asyncio.create_task(prepare()), asyncio.create_task(prepare())
        await asyncio.sleep(0)  # both have tried to enter: one runs, one waits
        with pytest.raises(PreparationBusy, match="1 at a time, 1 waiting"):
            await prepare()
        running = started
        release.set()
        await asyncio.gather(first, second)
        return running, started

    assert asyncio.run(scenario()) == (1, 2)


def _lipsync_form() -> dict[str, Any]:
    pcm = (np.sin(np.arange(16000) / 9.0) * 8000).astype(np.int16)
    return {"image": ("a.jpg", b"a portrait", "image/jpeg"), "audio": ("s.wav", wav_bytes(pcm), "audio/wav")}


@contextlib.contextmanager
def _oneshot_client(monkeypatch: pytest.MonkeyPatch, clock: ManualClock | None = None) -> Iterator[TestClient]:
    """The app with no Triton behind it: the portrait is taken as it is (the render is each test's own)."""
    settings = Settings(triton_url="127.0.0.1:1", demo=True)  # never contacted
    with TestClient(create_app(settings, clock=clock)) as client:

        async def any_portrait(portrait: bytes, engines: Any) -> object:
            return object()

        monkeypatch.setattr(client.app.state.ctx.avatars, "add", any_portrait)  # type: ignore[attr-defined]
        yield client


class StuckRender:
    """An offline render that never finishes by itself (a stuck Triton): it says when it started and when it was
    cancelled, and ``release`` ends it should the cap under test not come."""

    def __init__(self) -> None:
        self.started, self.cancelled, self.release = threading.Event(), threading.Event(), threading.Event()

    async def __call__(self, *args: Any) -> bytes:
        self.started.set()
        try:
            await asyncio.to_thread(self.release.wait, 120)
        finally:
            self.cancelled.set()
        return b"too late"


def test_a_lipsync_request_ends_at_its_absolute_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A render that never finishes (a stuck Triton, say) is cancelled at the session limit plus the time to
    finish it, answered in words, and its slot freed."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.transport.routes import oneshot

    stuck = StuckRender()
    started, cancelled, release = stuck.started, stuck.cancelled, stuck.release
    monkeypatch.setattr(oneshot, "render_offline", stuck)
    clock = ManualClock()
    with _oneshot_client(monkeypatch, clock) as client, ThreadPoolExecutor(1) as pool:
        try:
            answer = pool.submit(client.post, "/v1/lipsync", files=_lipsync_form())
            assert started.wait(60)
            settings = client.app.state.ctx.settings  # type: ignore[attr-defined]
            assert client.portal is not None
            client.portal.call(_advance, clock, settings.max_session_seconds + settings.drain_timeout_s - 1)
            client.portal.call(_turns, 20)
            assert not cancelled.is_set() and not answer.done()  # not before its time
            client.portal.call(_advance, clock, 1.0)
            response = answer.result(timeout=60)
        finally:
            release.set()
        assert cancelled.is_set()
        assert response.status_code == 503 and response.json()["error"]["code"] == "session_expired"
        assert "the most any session may last here" in response.json()["error"]["message"]
        assert client.app.state.ctx.slots.active == 0  # type: ignore[attr-defined]


def test_a_compatible_request_ends_at_its_absolute_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """/ws/lipsync: the same cap, per request, answered in that protocol's own format before the close."""
    import base64

    from gateway.transport.routes import compat

    stuck = StuckRender()
    started, cancelled, release = stuck.started, stuck.cancelled, stuck.release
    monkeypatch.setattr(compat, "render_offline", stuck)
    clock = ManualClock()
    form = _lipsync_form()
    request = {key: base64.b64encode(form[key][1]).decode() for key in ("image", "audio")}
    with _oneshot_client(monkeypatch, clock) as client, client.websocket_connect("/ws/lipsync") as ws:
        try:
            ws.send_text(json.dumps(request))
            assert started.wait(60)
            settings = client.app.state.ctx.settings  # type: ignore[attr-defined]
            assert client.portal is not None
            client.portal.call(_advance, clock, settings.max_session_seconds + settings.drain_timeout_s - 1)
            client.portal.call(_turns, 20)
            assert not cancelled.is_set()  # not before its time (nor at the connection's start deadline)
            client.portal.call(_advance, clock, 1.0)
            answer = ws.receive_json()
        finally:
            release.set()
        assert answer["status"] == "error" and "the most any session may last here" in answer["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4408
        assert client.app.state.ctx.slots.active == 0  # type: ignore[attr-defined]


def test_a_lipsync_requests_audio_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a long file takes seconds: on the event loop's thread it would stall every other client."""

    from gateway.transport.routes import oneshot

    threads: dict[str, int] = {}
    decode = oneshot.decode_upload_audio

    def watched_decode(*args: Any) -> Any:
        threads["decode"] = threading.get_ident()
        return decode(*args)

    async def render(*args: Any) -> bytes:
        threads["loop"] = threading.get_ident()  # a coroutine: it runs on the loop's thread
        return b"an mp4"

    monkeypatch.setattr(oneshot, "decode_upload_audio", watched_decode)
    monkeypatch.setattr(oneshot, "render_offline", render)
    with _oneshot_client(monkeypatch) as client:
        response = client.post("/v1/lipsync", files=_lipsync_form())
    assert response.status_code == 200 and response.content == b"an mp4"
    assert threads.keys() == {"decode", "loop"} and threads["decode"] != threads["loop"]


# ------------------------------------------------------------------------------------------ 8. the Host


def test_the_host_must_be_an_address_localhost_or_listed() -> None:
    allowed = ["avatar.example.com", "*.example.org"]
    for host in ("127.0.0.1:8000", "[::1]:8000", "10.0.0.5", "localhost:8000", "avatar.example.com", "a.example.org"):
        assert host_allowed(host, allowed), host
    for host in ("evil.example.net", "example.org.evil.net", "rebound.attacker.test:8000", "avatar.example.com.evil"):
        assert not host_allowed(host, allowed), host


@pytest.mark.triton
def test_a_rebound_name_is_refused(triton_server: EmbeddedTriton) -> None:
    with running_gateway(_settings(triton_server, allowed_hosts=[])) as url:
        rebound = {"Host": "attacker.test:8000", "Origin": "http://attacker.test:8000"}
        assert _status(url, "/v1/info", **rebound) == 421
        assert _status(url, "/v1/info", Host="localhost") == 200
        with pytest.raises(InvalidStatus, match="403"), never_reading_socket(url, "/ws/stream", "attacker.test"):
            pass


# ------------------------------------------------------------------------------------------- 9. the page


@pytest.mark.triton
def test_the_page_forbids_framing_and_foreign_scripts(guarded: str) -> None:
    with urllib.request.urlopen(f"{guarded}/", timeout=30) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_a_redis_password_never_reaches_a_message() -> None:
    from gateway.avatars.shared import without_password

    assert without_password("redis://:s3cret-pass@redis:6379/0") == "redis://:***@redis:6379/0"
    assert without_password("redis://user:s3cret-pass@10.0.0.1/2") == "redis://user:***@10.0.0.1/2"
    assert without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.triton
@pytest.mark.parametrize("engine", ["wav2lip", "sadtalker"])
def test_a_long_audio_sends_a_bounded_number_of_calls_at_once(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """Eight seconds of audio in one message make every motion/mel block ready at once; only
    LIPSYNC_MAX_INFLIGHT_CALLS of them are at Triton at a time, and the session still renders them all."""
    from collections import Counter

    from gateway_helpers import stream

    settings = _settings(triton_server, max_inflight_calls=2)
    with TestClient(create_app(settings)) as client:
        triton = client.app.state.ctx.triton  # type: ignore[attr-defined]
        calling, peak = Counter[str](), Counter[str]()
        infer = triton.infer

        async def counted(model: str, *args: Any, **kwargs: Any) -> Any:
            kind = "render" if "render" in model else "calls"
            calling[kind] += 1
            peak[kind] = max(peak[kind], calling[kind])
            try:
                return await infer(model, *args, **kwargs)
            finally:
                calling[kind] -= 1

        monkeypatch.setattr(triton, "infer", counted)
        avatar = client.post("/v1/avatars", content=astronaut_jpeg, headers={"content-type": "image/jpeg"})
        pcm = (np.sin(np.arange(16000 * 8) / 7.0) * 6000).astype(np.int16)
        result = stream(client, avatar.json()["avatar_id"], pcm, piece=pcm.size, engine=engine)
    assert result.end is not None and result.end["frames"] == 200
    assert peak["calls"] == 2  # reached, and never passed


def test_the_same_portrait_sent_at_once_is_prepared_once(
    astronaut_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of one photo costs one decode; every requester gets its answer, an error included."""
    from skimage import data as images

    from gateway.avatars.portrait import DEFAULT_LIMITS
    from gateway.errors import NoFaceFound

    store = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30)
    prepared: list[bytes] = []
    prepare = store._prepare

    def counted(portrait: bytes, engines: Any) -> Any:
        prepared.append(portrait)
        return prepare(portrait, engines)

    monkeypatch.setattr(store, "_prepare", counted)
    buffer = io.BytesIO()
    Image.fromarray(images.coffee()).save(buffer, format="JPEG")  # no face in it
    no_face = buffer.getvalue()

    async def flood() -> list[Any]:
        return await asyncio.gather(
            *(store.add(p) for p in [astronaut_jpeg] * 3 + [no_face] * 3), return_exceptions=True
        )

    results = asyncio.run(flood())
    assert sorted(prepared) == sorted([astronaut_jpeg, no_face])  # one preparation each
    assert results[0] is results[1] is results[2] and results[0].id == store.peek(results[0].id).id
    assert all(isinstance(r, NoFaceFound) for r in results[3:])
