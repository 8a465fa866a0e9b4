"""``WS /ws/stream``: the streaming protocol (docs/protocol.md) — start, audio in, fMP4 fragments out, end."""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import APIRouter, WebSocket

from gateway.audio_input import PcmDecoder
from gateway.context import client_key
from gateway.errors import BadMessage, IdleTimeout, TooLarge, UnknownAvatar
from gateway.offline import decode_upload_audio
from gateway.protocol import parse_control, parse_start
from gateway.session import StreamSession, run_together
from gateway.ws import Channel, serve, stream_error
from lipsync.audio import SAMPLE_RATE

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/ws/stream")
async def stream(websocket: WebSocket) -> None:
    await serve(websocket, _stream, stream_error)


async def _stream(channel: Channel) -> None:
    ctx, settings = channel.ctx, channel.ctx.settings
    first = await channel.first()
    if first.get("text") is None:
        raise BadMessage("The first message must be a JSON `start` message, not binary data.")
    start = parse_start(first["text"])
    state = ctx.avatars.get(start.avatar_id)
    if state is None:
        raise UnknownAvatar(start.avatar_id)
    with ctx.slots.hold(client_key(channel.websocket)):
        session = await ctx.new_session(state, start.options.session_options())
        session_id = uuid.uuid4().hex
        limits = {
            "max_message_bytes": settings.max_message_bytes,
            "max_session_seconds": settings.max_session_seconds,
            "idle_timeout_s": settings.idle_timeout_s,
        }
        await channel.send({**session.ready_message(), "session_id": session_id, "limits": limits})
        log.info("session %s: avatar %s, %s", session_id, state.id[:12], start.options)
        _, frames = await run_together(
            _receive_audio(channel, session, start.audio.format, start.audio.sample_rate),
            session.run(channel.send),
        )
        await channel.send({"type": "end", "frames": frames, "duration": frames / 25})
        await channel.websocket.close(code=1000)


async def _receive_audio(channel: Channel, session: StreamSession, audio_format: str, rate: int) -> None:
    settings = channel.ctx.settings
    decoder = PcmDecoder(rate) if audio_format == "pcm_s16le" else None
    file_bytes = bytearray()
    limit_samples = settings.max_session_seconds * SAMPLE_RATE
    idle = IdleTimeout(settings.idle_timeout_s)
    while True:
        message = await channel.receive(settings.idle_timeout_s, idle)
        if message.get("bytes") is not None:
            if decoder is None:
                file_bytes += message["bytes"]
                if len(file_bytes) > settings.max_message_bytes:
                    raise TooLarge(f"The audio file is over the limit of {settings.max_message_bytes:,} bytes.")
                continue
            session.feed(decoder.decode(message["bytes"]))
            if session.timeline.samples_heard > limit_samples:
                raise TooLarge(f"The session is over the limit of {settings.max_session_seconds:g} s of audio.")
            continue
        parse_control(message.get("text") or "")
        if decoder is not None:
            session.feed(decoder.flush())
        else:
            session.feed(await asyncio.to_thread(decode_upload_audio, bytes(file_bytes), settings))
        session.end()
        return
