"""What both WebSocket protocols share: accepting, deadlines, the message size limit, and ending a connection
with an error the client can read — each protocol in its own error format.

(The Host, Origin, token and socket count are checked before this, by :class:`gateway.transport.access.AccessControl`;
a client that stops reading is cut off by the HTTP server: :mod:`gateway.transport.http_server`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from gateway.context import Context, context_of
from gateway.errors import CLOSE_CODES, LipsyncError, SessionExpired, StartTimeout, TooLarge
from gateway.session.messages import Message
from gateway.transport.access import ErrorFormat

log = logging.getLogger(__name__)


class InternalError(LipsyncError):
    code = "internal"

    def __init__(self) -> None:
        super().__init__("Internal error; the session stopped. It has been logged.")


Handler = Callable[["Channel"], Awaitable[None]]


class Link:
    """A session's connection to its client, whatever carries it (a WebSocket, a WebRTC data channel): messages
    both ways, and a lifetime on the app's clock (:meth:`last_for`) that ends it whatever it waits on."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.opened = ctx.clock.now()
        settings = ctx.settings
        self.expires = self.opened + settings.start_timeout_s + settings.drain_timeout_s

    def last_for(self, seconds: float) -> None:
        """End the connection ``seconds`` from now (on the app's clock), whatever it is waiting on then."""
        self.expires = self.ctx.clock.now() + seconds

    async def run_until_expired(self, handler: Callable[[], Awaitable[None]]) -> None:
        """Run ``handler()``; cancel it and raise SessionExpired if it still runs when the link expires."""
        clock = self.ctx.clock
        work = asyncio.ensure_future(handler())
        try:
            while not work.done():
                alarm = asyncio.ensure_future(clock.sleep_until(self.expires))
                await asyncio.wait({work, alarm}, return_when=asyncio.FIRST_COMPLETED)
                alarm.cancel()
                if not work.done() and clock.now() >= self.expires:  # not moved on since the alarm was set
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    raise SessionExpired(round(clock.now() - self.opened))
            work.result()
        finally:
            work.cancel()  # serve() itself was cancelled (the server is stopping)

    async def receive(self, timeout: float | None = None, on_timeout: LipsyncError | None = None) -> dict[str, Any]:
        """The next message, ``{"text": …}`` or ``{"bytes": …}``; raises ``on_timeout`` if none arrives within
        ``timeout`` seconds, TooLarge if it is over the message size limit."""
        raise NotImplementedError

    async def send(self, item: bytes | Message) -> None:
        """A media segment (binary) or a message (its JSON, as text)."""
        raise NotImplementedError

    def check_size(self, message: dict[str, Any]) -> dict[str, Any]:
        limit = self.ctx.settings.max_message_bytes
        size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
        if size > limit:
            raise TooLarge(f"A message of {size:,} bytes is over the limit of {limit:,} bytes.")
        return message


class Channel(Link):
    """An accepted WebSocket with its limits: every receive is size-checked and may have a deadline, and the
    connection as a whole has a lifetime (:meth:`last_for`)."""

    def __init__(self, websocket: WebSocket, ctx: Context) -> None:
        super().__init__(ctx)
        self.websocket = websocket
        self._sending = asyncio.Lock()  # the session's writer and its receiver both send

    async def receive(self, timeout: float | None = None, on_timeout: LipsyncError | None = None) -> dict[str, Any]:
        """The next text or binary message; raises ``on_timeout`` if none arrives within ``timeout`` seconds."""
        try:
            message = await asyncio.wait_for(self.websocket.receive(), timeout)
        except TimeoutError:
            if on_timeout is None:
                raise
            raise on_timeout from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return self.check_size(dict(message))

    async def first(self) -> dict[str, Any]:
        """The first message, which must come within the start deadline."""
        seconds = self.ctx.settings.start_timeout_s
        return await self.receive(seconds, StartTimeout(seconds))

    async def send(self, item: bytes | Message) -> None:
        async with self._sending:
            if isinstance(item, bytes):
                await self.websocket.send_bytes(item)
            else:
                await self.websocket.send_json(item.to_json())


async def serve(websocket: WebSocket, handler: Handler, error_format: ErrorFormat) -> None:
    """Accept, run ``handler``; any error ends the connection in the protocol's own words.

    Until the handler sets its own lifetime (:meth:`Channel.last_for`), the connection may last the start
    deadline plus the time to finish (``drain_timeout_s``).
    """
    await websocket.accept()
    channel = Channel(websocket, context_of(websocket))
    try:
        await channel.run_until_expired(lambda: handler(channel))
    except WebSocketDisconnect:
        log.info("client left %s", websocket.url.path)
    except LipsyncError as error:
        log.info("session error %s: %s", error.code, error.message)
        await close_with(channel, error, error_format)
    except Exception:
        log.exception("session failed")
        await close_with(channel, InternalError(), error_format)


async def close_with(channel: Channel, error: LipsyncError, error_format: ErrorFormat) -> None:
    """Count the error, send it in the protocol's format and close with its code (if the client is still there)."""
    channel.ctx.metrics.errors.labels(error.code).inc()
    websocket = channel.websocket
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    # The client may be gone by now, or not reading: the HTTP server cuts off a client that reads nothing for
    # send_timeout_s, and this waits no longer than that either.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(channel.ctx.settings.send_timeout_s):
            await websocket.send_json(error_format(error).to_json())
            await websocket.close(code=CLOSE_CODES.get(error.code, 4400 if error.code != "internal" else 1011))
