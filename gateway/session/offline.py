"""Request/response rendering: a whole audio file in, one MP4 out (``POST /v1/lipsync``, ``WS /ws/lipsync``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.avatars.store import AvatarState
from gateway.context import Context
from gateway.errors import UnsupportedAudio
from gateway.session.messages import Message
from gateway.session.options import SessionOptions
from gateway.settings import Settings
from lipsync.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from lipsync.audio_io import AudioDecodeError, decode_audio


def decode_upload_audio(data: bytes, settings: Settings) -> np.ndarray:
    """An uploaded audio file → 16 kHz mono float32; UnsupportedAudio (in words) if it cannot be used."""
    try:
        wav = decode_audio(data, max_seconds=settings.max_session_seconds)
    except AudioDecodeError as err:
        raise UnsupportedAudio(f"The audio could not be read: {err}.") from err
    if wav.size < SAMPLES_PER_VIDEO_FRAME:
        raise UnsupportedAudio(f"The audio is too short: {wav.size / SAMPLE_RATE:.3f} s; at least 0.04 s is needed.")
    return wav


async def render_offline(ctx: Context, avatar: AvatarState, wav: np.ndarray, options: SessionOptions) -> bytes:
    """Whole audio in, one MP4 out (fragmented, with its duration in the init segment).

    Every fragment has ``chunk_frames`` frames (a small first fragment only helps a stream's first frame).
    """
    if options.first_chunk_frames is None:
        options = dataclasses.replace(options, first_chunk_frames=options.chunk_frames)
    session = await ctx.new_session(avatar, options)
    fragments: list[bytes] = []

    async def collect(item: bytes | Message) -> None:
        if isinstance(item, bytes):
            fragments.append(item)

    session.feed(wav)
    session.end()
    frames = await session.run(collect, init=False)
    return session.muxer.init_segment(total_frames=frames) + b"".join(fragments)
