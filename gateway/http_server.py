"""The gateway's HTTP server: uvicorn on a socket bound up front, with deadlines no client can sit out.

- The port is bound before anything else starts, so a second instance fails at once, in one line, without
  touching the first one's model repository or starting a Triton of its own.
- uvicorn has a keep-alive timeout but no deadline for a request's headers: a client that sends half a
  header keeps its connection forever. :class:`HeaderDeadline` closes a connection whose first request's
  headers have not all arrived within ``header_timeout_s``, and every HTTP response says
  ``Connection: close``, so each connection carries one request and the deadline covers all of them
  (a WebSocket is one upgraded request; its own deadlines are the protocol's).
- A slow *body* is bounded too: :class:`BodyDeadline` answers 408 ``body_timeout`` (and the connection ends)
  when a request's body has not all arrived within ``body_timeout_s`` of its headers, whatever the handler
  was doing with it (form parsing included), so a trickled upload cannot hold a connection or a handler.
- WebSocket messages: the transport's limit is set well above ``max_message_bytes``, so that a message
  over the limit reaches the app, which answers with the documented ``too_large`` error before closing;
  only far larger messages are cut by the transport itself (close code 1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

import uvicorn
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from gateway.errors import BodyTimeout
from gateway.http_errors import error_response
from gateway.settings import Settings

log = logging.getLogger(__name__)

# The transport cuts WebSocket messages above this many times the app's own limit.
TRANSPORT_MESSAGE_FACTOR = 4
HEADER_END = b"\r\n\r\n"


class PortInUse(RuntimeError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port; PortInUse (in words) if another process has it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use (is another gateway running?); stop it or set LIPSYNC_PORT"
            ) from err
        raise PortInUse(f"cannot listen on {host}:{port}: {err.strerror}") from err
    return sock


def header_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing connections whose request headers do not arrive within ``seconds``."""

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _seen = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._deadline = asyncio.get_running_loop().call_later(seconds, self._expire, transport)

        def data_received(self, data: bytes) -> None:
            if self._deadline is not None:
                # Only the tail matters: the end of the headers may straddle two reads.
                self._seen = (self._seen + data)[-(len(data) + len(HEADER_END)) :]
                if HEADER_END in self._seen:
                    self._disarm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._seen = b""

        def _expire(self, transport: asyncio.BaseTransport) -> None:
            self._deadline = None
            log.info("closing a connection whose request headers did not arrive within %g s", seconds)
            transport.close()

    return HeaderDeadline


class OneRequestPerConnection:
    """ASGI middleware: every HTTP response says ``Connection: close`` (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        await self.app(scope, receive, send_closing)


class BodyDeadline:
    """ASGI middleware: an HTTP request's body must arrive within ``seconds`` of its headers (else 408)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        body_arrived = asyncio.Event()
        if headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers:
            body_arrived.set()  # nothing to wait for
        response_started = False

        async def receive_watched() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_arrived.set()
            return message

        async def send_watched(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive_watched, send_watched))
        arrival = asyncio.ensure_future(body_arrived.wait())
        try:
            done, _ = await asyncio.wait({handler, arrival}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the handler is still waiting for the body: give up on it
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
                log.info("answering 408: a request's body did not arrive within %g s", self.seconds)
                if not response_started:
                    await error_response(BodyTimeout(self.seconds))(scope, receive, send)
                return
            await handler
        finally:
            arrival.cancel()
            if not handler.done():  # this request itself was cancelled (the server is stopping)
                handler.cancel()


def make_server(app: ASGIApp, settings: Settings, *, log_level: str = "info") -> uvicorn.Server:
    """The configured uvicorn server for ``app`` (run it with ``.run(sockets=[bind(...)])``)."""
    config = uvicorn.Config(
        OneRequestPerConnection(BodyDeadline(app, settings.body_timeout_s)),
        http=header_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
        ws_max_size=TRANSPORT_MESSAGE_FACTOR * settings.max_message_bytes,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=log_level,
    )
    return uvicorn.Server(config)


def serve(app: ASGIApp, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on the bound socket until interrupted."""
    make_server(app, settings).run(sockets=[sock])
