"""``POST /v1/avatars``: a portrait in (multipart field ``image``, or the raw image as the body) or a short video of
the person (field ``video``, or the raw video), its avatar out."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from gateway.avatars.video import require_video
from gateway.context import Ctx
from gateway.engines import takes_video
from gateway.errors import ImageTooLarge, UnsupportedImage
from gateway.transport.http_errors import error_responses
from gateway.transport.routes.http_common import read_limited

router = APIRouter()

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska")


class FramingSize(BaseModel):
    width: int
    height: int


class AvatarInfo(BaseModel):
    avatar_id: str
    width: int  # the photo, upright
    height: int
    box: list[int]  # the face box [x0, y0, x1, y1] in photo pixels
    faces_seen: int  # faces the detector that found this one saw (the largest is used)
    detector: Literal["hog", "cnn"]  # dlib's HOG detector, or its CNN detector where HOG found none
    framings: dict[str, FramingSize]  # the output video's size per framing
    kind: Literal["photo", "video"]
    frames: int  # 1 for a photo; a video's at 25 fps
    duration: float | None  # a video's, seconds
    demo: bool


_BODY = {"type": "string", "format": "binary"}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": _BODY, "video": _BODY}},
            },
            **{kind: {"schema": _BODY} for kind in IMAGE_TYPES + VIDEO_TYPES},
        },
    }
}


async def read_upload(request: Request, photo_limit: int, video_limit: int) -> bytes:
    """The upload's bytes from a multipart form (field ``image`` or ``video``) or a raw body, each kind within its
    own limit (what the bytes are is decided from the bytes themselves when they are prepared)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            for field, limit in (("image", photo_limit), ("video", video_limit)):
                upload = form.get(field)
                if isinstance(upload, UploadFile):
                    data = await read_limited(upload, limit, ImageTooLarge.for_limit(limit))
                    return require_video(data) if field == "video" else data
            raise UnsupportedImage("The form has no file field `image` or `video`: send the portrait or clip in it.")
    if kind in IMAGE_TYPES or kind in VIDEO_TYPES or kind == "application/octet-stream":
        limit = video_limit if kind in VIDEO_TYPES else photo_limit
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ImageTooLarge.for_limit(limit)
        return require_video(bytes(body)) if kind in VIDEO_TYPES else bytes(body)
    raise UnsupportedImage(
        f"Send the portrait as the multipart field `image` (a video: `video`), or as the body with Content-Type "
        f"{', '.join(IMAGE_TYPES + VIDEO_TYPES)} (got {kind or 'none'!r})."
    )


@router.post(
    "/v1/avatars",
    openapi_extra=_OPENAPI_BODY,
    responses=error_responses(400, 401, 403, 408, 413, 415, 422, 503),
)
async def create_avatar(request: Request, ctx: Ctx) -> AvatarInfo:
    """Find the face in a portrait (or on every frame of a short video) and prepare it once; the answer's
    ``avatar_id`` starts sessions."""
    data = await read_upload(request, ctx.settings.max_portrait_bytes, ctx.settings.max_video_bytes)
    # Every engine served here (and only those) prepares its part now, so that a session starts without that work;
    # a video avatar only for the engines that animate videos.
    served = await ctx.served_engines()
    state = await ctx.avatars.add(data, served)
    for engine in served:
        if state.clip is None or takes_video(engine):
            await ctx.prepare(state, engine)
    return AvatarInfo.model_validate({**state.describe(), "demo": ctx.settings.demo})
