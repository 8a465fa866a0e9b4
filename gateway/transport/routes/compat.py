"""``WS /ws/lipsync``: the request/response protocol existing clients speak.

``{audio: base64 WAV, image: base64 (or video: base64, to dub), fps, pads, img_size, batch_size, no_segmentation,
no_sr}`` →
``{status: "success", video: base64 MP4}`` or ``{status: "error", message}``. Every answer, errors included,
is in this format; a connection serves requests one after another until the client closes it or stays silent
longer than the idle limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from fastapi import APIRouter, WebSocket

from gateway.avatars.video import require_video
from gateway.context import client_key
from gateway.errors import (
    BadMessage,
    Busy,
    IdleTimeout,
    LipsyncError,
    SessionLimit,
    Timeout,
    TooLarge,
    Unauthorized,
)
from gateway.session.messages import CompatError, CompatVideo
from gateway.session.offline import decode_upload_audio, render_offline
from gateway.transport.protocol import parse_lipsync
from gateway.transport.ws import Channel, serve

log = logging.getLogger(__name__)
router = APIRouter()

# Errors that end the connection (after the answer): limits and access. Any other error is about one
# request: it is answered and the connection serves the next.
_FATAL = (TooLarge, Busy, SessionLimit, Unauthorized, Timeout)


@router.websocket("/ws/lipsync")
async def lipsync(websocket: WebSocket) -> None:
    await serve(websocket, _lipsync, CompatError.of)


async def _lipsync(channel: Channel) -> None:
    ctx, settings = channel.ctx, channel.ctx.settings
    message = await channel.first()
    while True:
        try:
            video = await _answer(channel, message.get("text"))
        except LipsyncError as error:
            if isinstance(error, _FATAL):
                raise
            ctx.metrics.errors.labels(error.code).inc()
            await channel.send(CompatError.of(error))
        else:
            await channel.send(CompatVideo(video=base64.b64encode(video).decode()))
        message = await channel.receive(settings.idle_timeout_s, IdleTimeout(settings.idle_timeout_s))


async def _answer(channel: Channel, text: str | None) -> bytes:
    ctx, settings = channel.ctx, channel.ctx.settings
    if text is None:
        raise BadMessage("Send the request as one JSON text message, not binary data.")
    request = parse_lipsync(text)
    channel.last_for(settings.max_session_seconds + settings.drain_timeout_s)  # this request, whatever it waits on
    try:
        picture = base64.b64decode(request.image or request.video or "", validate=True)
        audio = base64.b64decode(request.audio, validate=True)
    except (binascii.Error, ValueError) as err:
        field = "image" if request.image is not None else "video"
        raise BadMessage(f"`{field}` and `audio` must be base64 ({err}).") from err
    if request.video is not None:
        require_video(picture)
    with ctx.slots.hold(client_key(channel.websocket)):
        state = await ctx.avatars.add(picture, [ctx.engines[request.engine]])
        wav = await asyncio.to_thread(decode_upload_audio, audio, settings)
        return await render_offline(ctx, state, wav, request.session_options())
