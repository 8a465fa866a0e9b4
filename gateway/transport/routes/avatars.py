"""``POST /v1/avatars``: a portrait in (multipart field ``image``, or the raw image as the body), its avatar out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from gateway.context import Ctx
from gateway.errors import ImageTooLarge, UnsupportedImage
from gateway.transport.http_errors import error_responses
from gateway.transport.routes.http_common import read_limited

router = APIRouter()

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


class FramingSize(BaseModel):
    width: int
    height: int


class AvatarInfo(BaseModel):
    avatar_id: str
    width: int  # the photo, upright
    height: int
    box: list[int]  # the face box [x0, y0, x1, y1] in photo pixels
    faces_seen: int
    framings: dict[str, FramingSize]  # the output video's size per framing
    demo: bool


_BODY = {"type": "string", "format": "binary"}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": _BODY}, "required": ["image"]},
            },
            **{kind: {"schema": _BODY} for kind in IMAGE_TYPES},
        },
    }
}


async def read_portrait(request: Request, limit: int) -> bytes:
    """The portrait's bytes from a multipart form (field ``image``) or a raw image body, within ``limit``."""
    too_large = ImageTooLarge.for_limit(limit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise UnsupportedImage("The form has no file field `image`: send the portrait in it.")
            return await read_limited(image, limit, too_large)
    if kind in IMAGE_TYPES or kind == "application/octet-stream":
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise too_large
        return bytes(body)
    raise UnsupportedImage(
        f"Send the portrait as the multipart field `image`, or as the body with Content-Type "
        f"{', '.join(IMAGE_TYPES)} (got {kind or 'none'!r})."
    )


@router.post(
    "/v1/avatars",
    openapi_extra=_OPENAPI_BODY,
    responses=error_responses(400, 401, 403, 408, 413, 415, 422, 503),
)
async def create_avatar(request: Request, ctx: Ctx) -> AvatarInfo:
    """Find the face in a portrait and prepare it once; the answer's ``avatar_id`` starts sessions."""
    data = await read_portrait(request, ctx.settings.max_portrait_bytes)
    # Every engine served here (and only those) prepares its part now, so that a session starts without that work.
    served = await ctx.served_engines()
    state = await ctx.avatars.add(data, served)
    for engine in served:
        await ctx.prepare(state, engine)
    return AvatarInfo.model_validate({**state.describe(), "demo": ctx.settings.demo})
