"""A started session on any link (a WebSocket, a WebRTC data channel): `ready`, audio and control messages in,
media and stats out, `end` — the streaming protocol's conversation once the session exists (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import BadMessage, IdleTimeout, TooLarge
from gateway.media.audio_input import PcmDecoder
from gateway.session.core import StreamSession, run_together
from gateway.session.messages import Limits
from gateway.session.offline import decode_upload_audio
from gateway.transport.protocol import Interrupt, Start, Utterance, parse_control
from gateway.transport.ws import Link
from lipsync.audio import SAMPLE_RATE

log = logging.getLogger(__name__)


async def converse(
    channel: Link,
    session: StreamSession,
    start: Start,
    session_id: str,
    played: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """A started session on any link: `ready`, audio and control messages in, media and stats out, `end`
    (sent once ``played()`` is done, where the media plays after it is sent: WebRTC)."""
    settings = channel.ctx.settings
    limits = session.mode.limits(settings)
    length = session.mode.max_seconds(settings)
    deadline = session.clock.now() + length  # from `ready` on, in wall time
    channel.last_for(length + settings.drain_timeout_s)  # whatever it waits on
    await channel.send(session.ready_message(session_id, limits))
    log.info("session %s: avatar %s, %s %s", session_id, session.avatar.id[:12], start.mode, start.options)
    await run_together(
        _receive_audio(channel, session, start.audio.format, start.audio.sample_rate, deadline, limits),
        session.run(channel.send),
    )
    if played is not None:
        await played()
    await channel.send(session.end_message())


async def _receive_audio(
    channel: Link, session: StreamSession, audio_format: str, rate: int, deadline: float, limits: Limits
) -> None:
    settings = channel.ctx.settings
    decoder = PcmDecoder(rate) if audio_format == "pcm_s16le" else None
    file_bytes = bytearray()
    seconds = session.mode.max_seconds(settings)
    limit_samples = seconds * SAMPLE_RATE
    over = TooLarge(f"The session is over its limit of {seconds:g} s (of audio, or of time since it started).")
    # Audio waiting in a queue until it is played (a conversation's): no more than a clip's worth.
    queue_limit = settings.max_session_seconds * SAMPLE_RATE
    # A clip ends when its audio stops (the idle limit it announced in `ready`); a conversation idles by design
    # (none). Neither outlasts the session limit in wall time, so trickling a few samples just inside the idle
    # limit cannot hold a slot for ever.
    idle = limits.idle_timeout_s
    while True:
        left = max(deadline - session.clock.now(), 0.0)
        if idle is None or left <= idle:
            message = await channel.receive(left, over)
        else:
            message = await channel.receive(idle, IdleTimeout(idle))
        if message.get("bytes") is not None:
            if decoder is None:
                file_bytes += message["bytes"]
                if len(file_bytes) > settings.max_message_bytes:
                    raise TooLarge(f"The audio file is over the limit of {settings.max_message_bytes:,} bytes.")
                continue
            session.feed(decoder.decode(message["bytes"]))
            if session.timeline.samples_heard > limit_samples:
                raise over
            if session.mode.queued_samples > queue_limit:
                raise TooLarge(
                    f"The audio queued to be spoken is over the limit of {settings.max_session_seconds:g} s; "
                    "send it at most that far ahead of playback."
                )
            continue
        control = parse_control(message.get("text") or "")
        if isinstance(control, Interrupt):
            await channel.send(session.interrupt())
            continue
        if isinstance(control, Utterance):
            try:
                session.utterance(control.id)
            except ValueError as err:
                raise BadMessage(str(err)) from err
            continue
        if decoder is not None:
            session.feed(decoder.flush())
        else:
            session.feed(await asyncio.to_thread(decode_upload_audio, bytes(file_bytes), settings))
        session.end()
        await _nothing_after_end(channel, session)
        return


async def _nothing_after_end(channel: Link, session: StreamSession) -> None:
    """While the session renders what it has, any message from the client is a mistake worth saying."""
    receiving = asyncio.ensure_future(channel.receive())
    finishing = asyncio.ensure_future(session.finished.wait())
    try:
        await asyncio.wait({receiving, finishing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (receiving, finishing):
            waiting.cancel()
    if receiving.done() and not receiving.cancelled() and receiving.exception() is None:
        message = receiving.result()
        kind = "audio" if message.get("bytes") is not None else "a message"
        raise BadMessage(f"The client sent {kind} after `end`; a session takes nothing after its `end`.")
    if receiving.done() and not receiving.cancelled() and (error := receiving.exception()) is not None:
        raise error
