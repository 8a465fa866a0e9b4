"""Who may use the API, checked before any route runs: the Host a request names, the web page (Origin) that
sends it, the access token, how much body it may send and how many sockets one client may hold open.

- **Host**: a page whose name an attacker makes resolve to this machine (DNS rebinding) is same-origin with
  us in the browser's eyes, so the Origin check alone cannot stop it; the Host it names can. Allowed: an IP
  address (no name to rebind), ``localhost``, and the names in ``LIPSYNC_ALLOWED_HOSTS``.
- **Origin**: browsers attach one to cross-site requests, WebSocket handshakes included, and a page on another
  site can send a multipart POST without any preflight. Only our own page (its Origin names the Host the
  request was sent to) and the pages in ``LIPSYNC_ALLOWED_ORIGINS`` may call; a request without an Origin is
  not from a browser page (curl, SDKs, servers) and is allowed.
- **Token**: with ``LIPSYNC_AUTH_TOKEN`` set, every path needs it but an explicit public list (liveness, the
  page's facts, the page itself) — default deny, so a new route cannot be left open by forgetting a check.
  HTTP sends ``Authorization: Bearer …``; only WebSockets may send ``?token=`` (browsers cannot set headers on
  them), and the access log never shows it.
- **Body**: a request's body is counted as it arrives and refused past its route's limit, so nothing is parsed
  or spooled before the token and the size are known good. The refusal is sent at once, then the rest of the
  body is read and dropped (a bounded amount, for a bounded time) before the connection closes: closing on
  unread bytes makes the kernel reset it, and a client still sending would lose the answer with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    CLOSE_CODES,
    HostNotAllowed,
    LipsyncError,
    OriginNotAllowed,
    SocketLimit,
    TooLarge,
    Unauthorized,
)
from gateway.session.messages import Message as ProtocolMessage
from gateway.transport.http_errors import error_response

log = logging.getLogger(__name__)

# What may be reached without a token besides the page: liveness for probes, the page's public facts.
PUBLIC_PATHS = frozenset({"/healthz", "/v1/info"})
# A request to any other route carries no more body than this (they take none or a little JSON).
SMALL_BODY = 64 * 1024

# After refusing a body that was too large, what is still read and dropped so the refusal is not lost to a reset.
DRAIN_AFTER_REFUSAL_BYTES = 16 * 2**20
DRAIN_AFTER_REFUSAL_S = 5.0

# How a WebSocket protocol words an error: the JSON message sent before the socket is closed.
ErrorFormat = Callable[[LipsyncError], ProtocolMessage]


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Same-origin (the Origin's host:port is the Host header), listed, or not a browser (no Origin)."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in set(allowed):
        return True
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def host_name(host_header: str) -> str:
    """The name or address in a Host header, without its port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """An IP address, localhost, or a listed name (``*.example.com`` matches its sub-domains)."""
    if host_header is None:  # HTTP/1.0 without Host: not a browser, which always names the host
        return True
    name = host_name(host_header)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name in ("localhost", "localhost."):
        return True
    return any(fnmatchcase(name, pattern.lower()) for pattern in allowed)


def token_of(connection: HTTPConnection) -> str | None:
    """The access token a client sent: ``Authorization: Bearer …``, or on a WebSocket ``?token=``."""
    header = connection.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ")
    if connection.scope["type"] == "websocket":
        return connection.query_params.get("token")
    return None


def token_valid(connection: HTTPConnection, expected: str | None) -> bool:
    """No token is configured, or the right one was sent (compared in constant time)."""
    if expected is None:
        return True
    given = token_of(connection)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def client_group(host: str) -> str:
    """Whom per-client limits count together: an IPv4 address, or an IPv6 address's /64 (one subscriber's
    network: a client can pick any address in it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def client_of(scope: Scope) -> str:
    """The client a connection counts against (the proxy's address unless LIPSYNC_FORWARDED_ALLOW_IPS trusts it)."""
    client = scope.get("client")
    return client_group(client[0]) if client else "unknown"


class AccessControl:
    """ASGI middleware applying the module's rules before routing.

    HTTP refusals get the usual error body. A WebSocket from a wrong Host or Origin is refused at its handshake
    (close code 4403); one without the token, or over its client's socket limit, is accepted just long enough
    to hear why in its protocol's words (``websocket_errors``, by path) and closed with the error's code.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_origins: Iterable[str],
        allowed_hosts: Iterable[str],
        public_paths: Collection[str],
        body_limits: Mapping[str, tuple[int, Callable[[], LipsyncError]]],
        max_sockets_per_client: int,
        websocket_errors: Mapping[str, ErrorFormat],
        count: Callable[[str], None],
    ) -> None:
        """``count`` is told the code of every refusal made here (the app's error metric)."""
        self.app = app
        self.token = token
        self.allowed_origins = tuple(allowed_origins)
        self.allowed_hosts = tuple(allowed_hosts)
        self.public_paths = frozenset(public_paths)
        self.body_limits = dict(body_limits)
        self.max_sockets = max_sockets_per_client
        self.websocket_errors = dict(websocket_errors)
        self.count = count
        self._sockets: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        headers = connection.headers
        refusal: LipsyncError | None = None
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            refusal = HostNotAllowed(headers.get("host", ""))
        elif not origin_allowed(headers.get("origin"), headers.get("host"), self.allowed_origins):
            refusal = OriginNotAllowed(headers.get("origin", ""))
        elif scope["path"] not in self.public_paths and not token_valid(connection, self.token):
            refusal = Unauthorized()
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, refusal)
        elif refusal is not None:
            self.count(refusal.code)
            await error_response(refusal)(scope, receive, send)
        else:
            await self._http(scope, receive, send, headers)

    async def _http(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        limit, refusal = self.body_limits.get(scope["path"], (SMALL_BODY, None))
        too_large = refusal() if refusal else TooLarge(f"The request's body is over the limit of {limit:,} bytes.")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.count(too_large.code)
            await error_response(too_large)(scope, receive, send)
            return
        received = 0
        over = answered = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body, or more than its Content-Length said
                    over = True
                    raise too_large
            return message

        async def answer(message: Message) -> None:
            # Once the body went over, the answer is the size, whatever the app made of its failed read
            # (a form parser reports its own "error parsing the body").
            nonlocal answered
            if over and not answered and message["type"] == "http.response.start":
                answered = True
                await self._refuse_then_drain(scope, receive, send, too_large)
            elif not over:
                answered = answered or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, answer)
        except LipsyncError as error:  # raised by `counted` where no handler turned it into an answer
            if error is not too_large or answered:
                raise
            self.count(error.code)
            await self._refuse_then_drain(scope, receive, send, error)

    @staticmethod
    async def _refuse_then_drain(scope: Scope, receive: Receive, send: Send, error: LipsyncError) -> None:
        """Send the refusal but hold its last part until the client's remaining body is read (see the module)."""

        async def hold_the_end(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                message = {**message, "more_body": True}
            await send(message)

        await error_response(error)(scope, receive, hold_the_end)
        dropped = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_AFTER_REFUSAL_S):
                while dropped <= DRAIN_AFTER_REFUSAL_BYTES:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
                    dropped += len(message.get("body", b""))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, refusal: LipsyncError | None) -> None:
        if isinstance(refusal, HostNotAllowed | OriginNotAllowed):
            self.count(refusal.code)
            await send({"type": "websocket.close", "code": CLOSE_CODES[refusal.code], "reason": refusal.code})
            return
        client = client_of(scope)
        if refusal is None and self._sockets[client] >= self.max_sockets:
            refusal = SocketLimit(self.max_sockets)
        if refusal is not None:
            await self._refuse_in_words(scope, receive, send, refusal)
            return
        self._sockets[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._sockets[client] -= 1
            if self._sockets[client] <= 0:
                del self._sockets[client]

    async def _refuse_in_words(self, scope: Scope, receive: Receive, send: Send, error: LipsyncError) -> None:
        """Accept, say why in the path's protocol, close: a browser cannot read the reason of a refused handshake."""
        log.info("refusing a WebSocket to %s: %s", scope["path"], error.code)
        self.count(error.code)
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        error_format = self.websocket_errors.get(scope["path"])
        if error_format is not None:
            await send({"type": "websocket.send", "text": json.dumps(error_format(error).to_json())})
        await send({"type": "websocket.close", "code": CLOSE_CODES.get(error.code, 4400)})


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")


def redact(text: str) -> str:
    """``text`` with the value of any ``token`` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(r"\1REDACTED", text)


class RedactTokens(logging.Filter):
    """A log filter that keeps ``?token=…`` out of log lines (uvicorn logs each request's path and query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
