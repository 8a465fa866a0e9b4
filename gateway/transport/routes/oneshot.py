"""``POST /v1/lipsync``: portrait + audio file in, one MP4 out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from gateway.context import Ctx, client_key
from gateway.errors import ImageTooLarge, TooLarge
from gateway.session.offline import decode_upload_audio, render_offline
from gateway.session.options import EngineName
from gateway.transport.http_errors import error_responses
from gateway.transport.protocol import parse_options
from gateway.transport.routes.http_common import read_limited

router = APIRouter()


@router.post(
    "/v1/lipsync",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "the MP4 (H.264 + AAC)"},
        **error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 503),
    },
)
async def lipsync(
    ctx: Ctx,
    request: Request,
    image: Annotated[UploadFile, File(description="the portrait (JPEG, PNG or WebP)")],
    audio: Annotated[UploadFile, File(description="speech (WAV, MP3, OGG, WebM, …)")],
    engine: EngineName = "sadtalker",
    pose: Literal["still", "audio"] = "still",
    enhance: bool = False,
    seed: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    framing: Literal["portrait", "face"] = "portrait",
) -> Response:
    """Render the whole clip and answer with it (the streaming protocol does the same while it renders)."""
    settings = ctx.settings
    with ctx.slots.hold(client_key(request)):
        portrait_limit, audio_limit = settings.max_portrait_bytes, settings.max_message_bytes
        portrait = await read_limited(image, portrait_limit, ImageTooLarge.for_limit(portrait_limit))
        sound = await read_limited(
            audio, audio_limit, TooLarge(f"The audio file is larger than the limit of {audio_limit:,} bytes.")
        )
        state = await ctx.avatars.add(portrait)
        wav = await asyncio.to_thread(decode_upload_audio, sound, settings)
        chosen = {"pose": pose} if pose != "still" else {}  # so that `pose` with Wav2Lip is refused, not ignored
        options = parse_options(engine=engine, enhance=enhance, seed=seed, framing=framing, **chosen)
        video = await render_offline(ctx, state, wav, options.session_options())
    return Response(video, media_type="video/mp4")
