"""The FastAPI application: routers per interface, one error format, the access checks, the page.

``create_app(settings)`` builds everything from one Settings object; the lifespan owns the Triton client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_swagger import patch_fastapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.avatars import codec as avatar_codec
from gateway.avatars.portrait import AvatarLimits
from gateway.avatars.shared import SharedAvatars
from gateway.avatars.store import AvatarStore
from gateway.avatars.video import ClipLimits
from gateway.context import Context, SessionSlots, context_of
from gateway.engines import engines
from gateway.errors import BadMessage, ImageTooLarge, LipsyncError, TooLarge
from gateway.metrics import Metrics
from gateway.session.clock import Clock, LoopClock
from gateway.session.messages import CompatError, StreamError
from gateway.settings import Settings
from gateway.transport.access import PUBLIC_PATHS, AccessControl
from gateway.transport.http_errors import FRAMEWORK_CODES, body_response, error_response
from gateway.transport.page import Page
from gateway.transport.routes import avatars, compat, oneshot, operations, stream, webrtc
from gateway.triton.client import TritonClient
from lipsync.audio import FPS

log = logging.getLogger(__name__)

DESCRIPTION = """Portrait + speech → lip-synced talking-head video over NVIDIA Triton.

The WebSocket protocols (streaming and the compatible request/response one) are in docs/protocol.md.
Every refusal has the body `{"error": {"code", "message"}}`."""

# A multipart form's boundaries and part headers, on top of the files it carries.
FORM_OVERHEAD = 64 * 1024
# A WebRTC offer: its SDP (at most 32 KiB) and the start fields.
OFFER_LIMIT = 64 * 1024


def create_app(settings: Settings, clock: Clock | None = None) -> FastAPI:
    """The app for ``settings``; ``clock`` (tests) replaces the event loop's for conversation sessions."""
    if settings.triton_url is None:
        raise ValueError("create_app needs settings.triton_url (python -m gateway up starts an embedded Triton)")
    triton_url = settings.triton_url
    metrics = Metrics()  # before the lifespan: the HTTP server counts the clients it cuts off in it too

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        triton = TritonClient(
            triton_url,
            timeout_s=settings.triton_timeout_s,
            metrics=metrics,
            health_interval_s=settings.triton_health_interval_s,
            dns_refresh_s=settings.triton_dns_refresh_s,
        )
        await triton.start()
        served = engines(settings.audio_block_frames)
        shared = None
        if settings.redis_url is not None:
            shared = SharedAvatars(
                settings.redis_url,
                ttl_s=settings.redis_ttl_s,
                codec=avatar_codec.RecordCodec(
                    served,
                    avatar_codec.RecordLimits(
                        settings.max_output_side,
                        max(settings.max_portrait_pixels, settings.max_video_pixels),
                        max_clip_bytes=int(settings.max_shared_video_mb * 2**20),
                        max_clip_frames=math.ceil(settings.max_video_seconds * FPS),
                    ),
                ),
                signing_key=settings.avatar_signing_key or "",  # Settings refuses Redis without one
                refused=metrics.shared_avatars_refused,
            )
        limits = AvatarLimits(settings.max_portrait_bytes, settings.max_portrait_pixels, settings.min_face_pixels)
        store = AvatarStore(
            limits,
            capacity_bytes=int(settings.avatar_cache_mb * 2**20),
            max_output_side=settings.max_output_side,
            shared=shared,
            preparations=settings.max_portrait_preparations,
            waiting=settings.max_portrait_queue,
            clip_limits=ClipLimits(settings.max_video_bytes, settings.max_video_seconds, settings.max_video_pixels),
        )
        slots = SessionSlots(settings.max_sessions, settings.max_sessions_per_client, metrics)
        app.state.ctx = Context(settings, metrics, triton, store, slots, served, clock or LoopClock())
        app.state.webrtc_peers = set()  # the tasks of WebRTC sessions, which outlive their offer's request
        if settings.demo:
            log.warning("DEMO: the models do not run the official weights; the video is not a result of the models")
        yield
        for peer in list(app.state.webrtc_peers):
            peer.cancel()
        await asyncio.gather(*app.state.webrtc_peers, return_exceptions=True)
        await triton.close()
        if shared is not None:
            await shared.close()

    app = FastAPI(
        title="lipsync-triton",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the fastapi-swagger package below: no CDN, works offline
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.metrics = metrics
    patch_fastapi(app, docs_url="/docs", redirect_from_root_to_docs=False)
    page_paths = Page.paths(settings.web_dir)
    # An avatar or a picture to animate is a photo or a video: the body may be as large as the larger of them.
    portrait_limit = max(settings.max_portrait_bytes, settings.max_video_bytes)
    app.add_middleware(
        AccessControl,
        token=settings.auth_token,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=settings.allowed_hosts,
        public_paths=PUBLIC_PATHS | page_paths,
        body_limits={
            "/v1/avatars": (portrait_limit + FORM_OVERHEAD, lambda: ImageTooLarge.for_limit(portrait_limit)),
            "/v1/webrtc/offer": (
                OFFER_LIMIT,
                lambda: TooLarge(f"The offer is over the limit of {OFFER_LIMIT:,} bytes."),
            ),
            "/v1/lipsync": (
                portrait_limit + settings.max_message_bytes + FORM_OVERHEAD,
                lambda: TooLarge(
                    f"The request is over the limit of {portrait_limit:,} bytes for the portrait or video plus "
                    f"{settings.max_message_bytes:,} bytes for the audio."
                ),
            ),
        },
        max_sockets_per_client=settings.max_sockets_per_client,
        websocket_errors={"/ws/stream": StreamError.of, "/ws/lipsync": CompatError.of},
        count=lambda code: metrics.errors.labels(code).inc(),
    )

    @app.exception_handler(LipsyncError)
    async def lipsync_error(request: Request, error: LipsyncError) -> JSONResponse:
        context_of(request).metrics.errors.labels(error.code).inc()
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        return await lipsync_error(request, BadMessage(f"Invalid request: {where}: {first.get('msg', 'invalid')}."))

    @app.exception_handler(StarletteHTTPException)
    async def framework_refusal(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if isinstance(error.__cause__, LipsyncError):  # e.g. the body went over its limit while a form was parsed
            return await lipsync_error(request, error.__cause__)
        code = FRAMEWORK_CODES.get(error.status_code, "http_error")
        context_of(request).metrics.errors.labels(code).inc()
        return body_response(code, f"{error.detail}.".replace("..", "."), error.status_code, error.headers)

    for router in (operations.router, avatars.router, oneshot.router, stream.router, compat.router, webrtc.router):
        app.include_router(router)
    if page_paths:
        app.mount("/", Page(directory=settings.web_dir, html=True), name="web")
    return app


def app_from_env() -> FastAPI:
    """The app configured from LIPSYNC_* variables (``uvicorn gateway.app:app_from_env --factory``)."""
    return create_app(Settings())
