"""gateway/ops/probe.py, the gateway pod's readiness probe and preStop drain (deploy/k8s), against a stub server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from prometheus_client import generate_latest

from gateway.metrics import Metrics
from gateway.ops import probe


class Stub(BaseHTTPRequestHandler):
    """Answers /readyz with ``ready_status`` and /metrics with a real registry's text; records the headers."""

    ready_status: ClassVar[int] = 200
    metrics: ClassVar[Metrics] = Metrics()
    seen_authorization: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen_authorization.append(self.headers.get("Authorization"))
        if self.path == "/readyz":
            status, body = self.ready_status, b'{"ready": false}' if self.ready_status != 200 else b"{}"
        elif self.path == "/metrics":
            status, body = 200, generate_latest(self.metrics.registry)
        else:
            status, body = 404, b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    Stub.ready_status = 200
    Stub.metrics = Metrics()
    Stub.seen_authorization = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LIPSYNC_PORT", str(httpd.server_address[1]))
    monkeypatch.delenv("LIPSYNC_AUTH_TOKEN", raising=False)
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ready_follows_readyz(server: str) -> None:
    assert probe.main(["ready"]) == 0
    Stub.ready_status = 503
    assert probe.main(["ready"]) == 1
    assert Stub.seen_authorization == [None, None]


def test_ready_sends_the_token_when_one_is_set(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_AUTH_TOKEN", "s3cret")
    assert probe.main(["ready"]) == 0
    assert Stub.seen_authorization == ["Bearer s3cret"]


def test_ready_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_PORT", "9")  # discard: nothing listens there
    assert probe.main(["ready"]) == 1


def test_active_sessions_reads_the_gateways_gauge() -> None:
    metrics = Metrics()
    metrics.active_sessions.inc(3)
    assert probe.active_sessions(generate_latest(metrics.registry).decode()) == 3
    with pytest.raises(ValueError, match=probe.SESSIONS_METRIC):
        probe.active_sessions("other_metric 1.0\n")


def test_drain_returns_at_once_without_sessions(server: str) -> None:
    started = time.monotonic()
    assert probe.drain(server, max_wait_s=30, poll_s=5) == 0
    assert time.monotonic() - started < 2


def test_drain_waits_for_the_last_session(server: str) -> None:
    Stub.metrics.active_sessions.inc(2)
    threading.Timer(0.3, lambda: Stub.metrics.active_sessions.dec(2)).start()
    started = time.monotonic()
    assert probe.drain(server, max_wait_s=30, poll_s=0.05) == 0
    assert 0.25 < time.monotonic() - started < 5


def test_drain_gives_up_after_max_wait(server: str) -> None:
    Stub.metrics.active_sessions.inc()
    started = time.monotonic()
    assert probe.drain(server, max_wait_s=0.2, poll_s=0.05) == 1
    assert time.monotonic() - started < 2
    assert probe.main(["drain", "--max-wait-s", "0.1", "--poll-s", "0.05"]) == 0  # the pod stops either way


def test_drain_does_not_wait_when_the_gateway_is_gone() -> None:
    assert probe.drain("http://127.0.0.1:9", max_wait_s=30, poll_s=5) == 0
