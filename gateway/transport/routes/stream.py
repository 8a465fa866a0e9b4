"""``WS /ws/stream``: the streaming protocol (docs/protocol.md) — start, audio in, fMP4 fragments out, end."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, WebSocket

from gateway.context import client_key
from gateway.errors import BadMessage, UnknownAvatar
from gateway.session.messages import StreamError
from gateway.transport.converse import converse
from gateway.transport.protocol import parse_start
from gateway.transport.ws import Channel, serve

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/ws/stream")
async def stream(websocket: WebSocket) -> None:
    await serve(websocket, _stream, StreamError.of)


async def _stream(channel: Channel) -> None:
    ctx = channel.ctx
    first = await channel.first()
    if first.get("text") is None:
        raise BadMessage("The first message must be a JSON `start` message, not binary data.")
    start = parse_start(first["text"])
    state = await ctx.avatars.get(start.avatar_id)
    if state is None:
        raise UnknownAvatar(start.avatar_id)
    with ctx.slots.hold(client_key(channel.websocket)):
        session = await ctx.new_session(state, start.session_options())
        await converse(channel, session, start, uuid.uuid4().hex)
        await channel.websocket.close(code=1000)
