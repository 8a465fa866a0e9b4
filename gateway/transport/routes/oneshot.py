"""``POST /v1/lipsync``: portrait + audio file in, one MP4 out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from gateway.context import Ctx, client_key
from gateway.engines import default_engine, registered
from gateway.errors import ImageTooLarge, TooLarge
from gateway.session.offline import decode_upload_audio, render_offline
from gateway.session.options import EngineOptions, SessionOptions
from gateway.transport.http_errors import error_responses
from gateway.transport.protocol import parse_options
from gateway.transport.routes.http_common import read_limited

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
    image: Annotated[UploadFile, File(description="the portrait (JPEG, PNG or WebP)")],
    audio: Annotated[UploadFile, File(description="speech (WAV, MP3, OGG, WebM, …)")],
    engine: Annotated[
        str | None,
        Query(description="the engine (default: the first listed)", json_schema_extra={"enum": list(registered())}),
    ] = None,
    enhance: bool = False,
    seed: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    framing: Literal["portrait", "face"] = "portrait",
) -> Response:
    """Render the whole clip and answer with it (the streaming protocol does the same while it renders).

    Besides the parameters every engine takes, the engine's own options may be given as query parameters."""
    settings = ctx.settings
    with ctx.slots.hold(client_key(request)):
        portrait_limit, audio_limit = settings.max_portrait_bytes, settings.max_message_bytes
        portrait = await read_limited(image, portrait_limit, ImageTooLarge.for_limit(portrait_limit))
        sound = await read_limited(
            audio, audio_limit, TooLarge(f"The audio file is larger than the limit of {audio_limit:,} bytes.")
        )
        engines_own = engine_only_options()
        own = {key: value for key, value in request.query_params.items() if key in engines_own}
        options = parse_options(engine=engine or default_engine(), enhance=enhance, seed=seed, framing=framing, **own)
        state = await ctx.avatars.add(portrait, [ctx.engines[options.engine]])
        wav = await asyncio.to_thread(decode_upload_audio, sound, settings)
        video = await render_offline(ctx, state, wav, SessionOptions(options))
    return Response(video, media_type="video/mp4")
