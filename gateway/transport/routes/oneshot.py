"""``POST /v1/lipsync``: portrait (or a video to dub) + audio file in, one MP4 out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from gateway.avatars.video import require_video
from gateway.context import Ctx, client_key
from gateway.engines import default_engine, registered, takes_video
from gateway.errors import BadMessage, ImageTooLarge, TooLarge
from gateway.session.offline import decode_upload_audio, render_offline
from gateway.session.options import EngineOptions, SessionOptions
from gateway.transport.http_errors import error_responses
from gateway.transport.protocol import parse_options
from gateway.transport.routes.http_common import read_limited
from gateway.transport.ws import Link

router = APIRouter()


def engine_only_options() -> dict[str, dict[str, Any]]:
    """Each engine's own options that a query parameter can carry (single values), with their JSON schemas."""
    common = set(EngineOptions.model_fields)
    found: dict[str, dict[str, Any]] = {}
    for name, engine in registered().items():
        schema = engine.options_model.model_json_schema()["properties"]
        for field in engine.options_model.model_fields:
            if field not in common and schema[field].get("type") != "array":
                found[field] = {**schema[field], "description": f"{name} engine only"}
    return found


def video_engine() -> str:
    """The engine a video is dubbed with when the request names none: the first that animates videos."""
    return next((name for name, engine in registered().items() if takes_video(engine)), default_engine())


def _query_parameters() -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": schema["description"]}
        for name, schema in engine_only_options().items()
    ]


@router.post(
    "/v1/lipsync",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "the MP4 (H.264 + AAC)"},
        **error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 503),
    },
    openapi_extra={"parameters": _query_parameters()},
)
async def lipsync(
    ctx: Ctx,
    request: Request,
    audio: Annotated[UploadFile, File(description="speech (WAV, MP3, OGG, WebM, …)")],
    image: Annotated[UploadFile | None, File(description="the portrait (JPEG, PNG or WebP)")] = None,
    video: Annotated[
        UploadFile | None, File(description="instead of a portrait, a video to dub (MP4, MOV, WebM)")
    ] = None,
    engine: Annotated[
        str | None,
        Query(description="the engine (default: the first listed)", json_schema_extra={"enum": list(registered())}),
    ] = None,
    enhance: bool = False,
    seed: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    framing: Literal["portrait", "face"] = "portrait",
) -> Response:
    """Render the whole clip and answer with it (the streaming protocol does the same while it renders).

    Given a ``video`` instead of an ``image``, the video is dubbed: its frames one for one while it lasts (then
    played backward and forward again), the lips following the new audio. Besides the parameters every engine
    takes, the engine's own options may be given as query parameters."""
    settings = ctx.settings
    if (image is None) == (video is None):
        raise BadMessage("Send either `image` (a portrait) or `video` (a video to dub), and `audio`.")
    answer = b""

    async def render() -> None:
        nonlocal answer
        with ctx.slots.hold(client_key(request)):
            audio_limit = settings.max_message_bytes
            if image is not None:
                portrait = await read_limited(
                    image, settings.max_portrait_bytes, ImageTooLarge.for_limit(settings.max_portrait_bytes)
                )
            else:
                assert video is not None
                limit = settings.max_video_bytes
                portrait = require_video(await read_limited(video, limit, ImageTooLarge.for_limit(limit)))
            sound = await read_limited(
                audio, audio_limit, TooLarge(f"The audio file is larger than the limit of {audio_limit:,} bytes.")
            )
            engines_own = engine_only_options()
            own = {key: value for key, value in request.query_params.items() if key in engines_own}
            # A video goes to an engine that animates videos unless the request names one.
            chosen = engine or (default_engine() if image is not None else video_engine())
            options = parse_options(engine=chosen, enhance=enhance, seed=seed, framing=framing, **own)
            state = await ctx.avatars.add(portrait, [ctx.engines[options.engine]])
            wav = await asyncio.to_thread(decode_upload_audio, sound, settings)  # seconds of work: not on the loop
            answer = await render_offline(ctx, state, wav, SessionOptions(options))

    # The same absolute cap as a streaming session's, whatever the request waits on (a queue, a slow Triton):
    # past it, the work is cancelled, its slot freed, and the answer is session_expired.
    lifetime = Link(ctx)
    lifetime.last_for(settings.max_session_seconds + settings.drain_timeout_s)
    await lifetime.run_until_expired(render)
    return Response(answer, media_type="video/mp4")
