"""Who may use the API: the access token, and which web pages (Origins) may call it from a browser.

Browsers attach an ``Origin`` header to cross-site requests, WebSocket handshakes included, and a page on
another site can send a multipart POST without any preflight. So by default only our own page may call the
API from a browser: the Origin must name this server (the ``Host`` the request was sent to) or be listed in
``LIPSYNC_ALLOWED_ORIGINS``. A request without an Origin is not from a browser page (curl, SDKs, servers) and
is allowed; the access token, when set, still applies to it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import OriginNotAllowed, Unauthorized
from gateway.http_errors import error_response

# What may be reached without a token: liveness for probes, the page and its public facts.
PUBLIC_PATHS = ("/healthz", "/v1/info")


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


class OriginCheck:
    """ASGI middleware: refuse browser requests from pages of other origins, before any handler runs.

    HTTP gets a 403 with the usual error body; a WebSocket handshake is refused with close code 4403.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        origin = connection.headers.get("origin")
        if origin_allowed(origin, connection.headers.get("host"), self.allowed):
            await self.app(scope, receive, send)
            return
        error = OriginNotAllowed(origin or "")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4403, "reason": "origin not allowed"})
            return
        await error_response(error)(scope, receive, send)


def token_of(connection: HTTPConnection) -> str | None:
    """The access token a client sent: ``Authorization: Bearer …``, or ``?token=`` (browsers' WebSockets)."""
    header = connection.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ")
    return connection.query_params.get("token")


def check_token(connection: HTTPConnection, expected: str | None) -> None:
    """Raise Unauthorized unless no token is configured or the right one was sent (compared in constant time)."""
    if expected is None:
        return
    given = token_of(connection)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized()
