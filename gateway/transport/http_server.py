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
- A client that stops reading (its TCP window closed) would hold its connection, and a session's slot, for
  ever: once the server's buffer to it is full and the client has taken nothing of it for ``send_timeout_s``,
  :class:`StallWatch` aborts the connection (HTTP or WebSocket), which frees everything the request held; it is
  logged and counted (``lipsync_clients_cut_off``). A slow client that reads keeps its connection, however large
  the response.
- WebSocket messages: the transport takes a message a little over ``max_message_bytes`` so that one just
  over the limit reaches the app, which answers with the documented ``too_large`` error before closing; larger
  ones are cut by the transport itself (close code 1009). It holds one message at a time for the app and
  does not inflate compressed messages (per-message deflate off): a few bytes on the wire cannot become
  megabytes in memory.
- ``?token=`` never reaches the logs (:class:`gateway.transport.access.RedactTokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

import uvicorn
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.errors import BodyTimeout
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.transport.access import RedactTokens
from gateway.transport.http_errors import error_response

log = logging.getLogger(__name__)

# The transport takes WebSocket messages this much over the app's limit (the app refuses them in words).
TRANSPORT_MESSAGE_MARGIN = 64 * 1024
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


class StallWatch:
    """Aborts a connection whose client has taken nothing of what the server sends for ``seconds``.

    asyncio pauses a protocol when the transport's buffer is over its high-water mark (after the kernel's buffers
    filled) and resumes it only when the buffer has drained below the low one. One response can be far larger
    than that (a whole MP4 is written at once), so being paused is not the sign: while paused, the buffer is
    looked at a few times per ``seconds``, and a client that has taken any of it since keeps its connection,
    however slowly it reads; one that took nothing for ``seconds`` loses it."""

    CHECKS_PER_PERIOD = 4

    def __init__(self, seconds: float, kind: str, on_cut_off: Callable[[str], None]) -> None:
        self.seconds = seconds
        self.kind = kind
        self.on_cut_off = on_cut_off
        self._timer: asyncio.TimerHandle | None = None
        self._left = 0  # bytes in the transport's buffer at the last look
        self._since = 0.0  # the loop's time when the client last took some

    def paused(self, transport: asyncio.BaseTransport) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._left, self._since = self._buffered(transport), loop.time()
            self._timer = loop.call_later(self.seconds / self.CHECKS_PER_PERIOD, self._look, transport)

    def resumed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @staticmethod
    def _buffered(transport: asyncio.BaseTransport) -> int:
        return cast(asyncio.WriteTransport, transport).get_write_buffer_size()

    def _look(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        left = self._buffered(transport)
        if left < self._left:  # some went out: the client reads (a write while paused only adds)
            self._since = loop.time()
        self._left = left
        if loop.time() - self._since < self.seconds:
            self._timer = loop.call_later(self.seconds / self.CHECKS_PER_PERIOD, self._look, transport)
            return
        self._timer = None
        self._cut_off(transport)

    def _cut_off(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        log.warning("cutting off %s client %s: it has read nothing for %g s", self.kind, peer, self.seconds)
        self.on_cut_off(self.kind)
        # Reset, not close: close() would wait for the buffer to drain, which it never will, and even an aborted
        # socket's kernel buffer would linger, unsendable, behind a closed window. A zero linger time makes the
        # close a reset that drops it. (uvloop's transports are not asyncio's classes: cast, not isinstance.)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cast(asyncio.Transport, transport).abort()


def http_protocol(settings: Settings, on_cut_off: Callable[[str], None]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing connections whose request headers do not arrive within
    ``header_timeout_s`` and aborting those whose client stops reading (:class:`StallWatch`)."""
    seconds = settings.header_timeout_s

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _seen = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._stall = StallWatch(settings.send_timeout_s, "http", on_cut_off)
            self._transport = transport
            self._deadline = asyncio.get_running_loop().call_later(seconds, self._expire, transport)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._stall.paused(self._transport)

        def resume_writing(self) -> None:
            self._stall.resumed()
            super().resume_writing()

        def data_received(self, data: bytes) -> None:
            if self._deadline is not None:
                # Only the tail matters: the end of the headers may straddle two reads.
                self._seen = (self._seen + data)[-(len(data) + len(HEADER_END)) :]
                if HEADER_END in self._seen:
                    self._disarm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._stall.resumed()
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


def websocket_protocol(settings: Settings, on_cut_off: Callable[[str], None]) -> type[asyncio.Protocol]:
    """uvicorn's WebSocket protocol, aborting connections whose client stops reading (:class:`StallWatch`)."""

    class StalledWebSocketsCutOff(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._stall = StallWatch(settings.send_timeout_s, "websocket", on_cut_off)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._stall.paused(self.transport)

        def resume_writing(self) -> None:
            self._stall.resumed()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stall.resumed()
            super().connection_lost(exc)

    return StalledWebSocketsCutOff


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


def make_server(app: FastAPI, settings: Settings, *, log_level: str = "info") -> uvicorn.Server:
    """The configured uvicorn server for ``app`` (from :func:`gateway.app.create_app`; run it with
    ``.run(sockets=[bind(...)])``)."""
    metrics: Metrics = app.state.metrics

    def cut_off(kind: str) -> None:
        metrics.clients_cut_off.labels(kind).inc()

    config = uvicorn.Config(
        OneRequestPerConnection(BodyDeadline(app, settings.body_timeout_s)),
        http=http_protocol(settings, cut_off),
        ws=websocket_protocol(settings, cut_off),
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
        ws_max_size=settings.max_message_bytes + TRANSPORT_MESSAGE_MARGIN,
        ws_max_queue=1,
        ws_per_message_deflate=False,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=log_level,
    )
    for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn logs each request's path with its query
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    return uvicorn.Server(config)


def serve(app: FastAPI, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on the bound socket until interrupted."""
    make_server(app, settings).run(sockets=[sock])
