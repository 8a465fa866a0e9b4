"""The FastAPI application: avatars, streaming and one-shot lip-sync over Triton, metrics, the page.

``create_app(settings)`` builds everything from one Settings object; the lifespan owns the Triton client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketState

from gateway.audio_input import PcmDecoder
from gateway.avatar_store import AvatarState, AvatarStore
from gateway.avatars import AvatarLimits
from gateway.errors import (
    CLOSE_CODES,
    HTTP_STATUS,
    BadMessage,
    Busy,
    LipsyncError,
    TooLarge,
    Unauthorized,
    UnknownAvatar,
    UnsupportedAudio,
)
from gateway.metrics import Metrics
from gateway.protocol import Options, parse_control, parse_lipsync, parse_start
from gateway.session import SessionOptions, StreamSession, run_together
from gateway.settings import Settings
from gateway.triton import TritonClient
from lipsync.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from lipsync.audio_io import AudioDecodeError, decode_audio

log = logging.getLogger(__name__)

# What /readyz requires: every model and ensemble a session calls.
SERVED_MODELS = ("avatar", "mapping", "motion", "mel", "audio2pose", "render")


@dataclass
class Context:
    settings: Settings
    metrics: Metrics
    triton: TritonClient
    avatars: AvatarStore
    active_sessions: int = 0

    @contextlib.contextmanager
    def session_slot(self) -> Iterator[None]:
        if self.active_sessions >= self.settings.max_sessions:
            raise Busy(self.settings.max_sessions)
        self.active_sessions += 1
        self.metrics.active_sessions.inc()
        try:
            yield
        finally:
            self.active_sessions -= 1
            self.metrics.active_sessions.dec()

    def new_session(self, avatar: AvatarState, options: SessionOptions) -> StreamSession:
        return StreamSession(
            avatar,
            options,
            self.triton,
            self.metrics,
            motion_block=self.settings.motion_block_frames,
            max_inflight=self.settings.max_inflight_renders,
            demo=self.settings.demo,
        )


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


# Handlers take the app's Context through this dependency (module level: FastAPI resolves annotations here).
Ctx = Annotated[Context, Depends(_context)]


def _error_body(err: LipsyncError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message}}


def _decode_audio(data: bytes, settings: Settings) -> np.ndarray:
    try:
        wav = decode_audio(data, max_seconds=settings.max_session_seconds)
    except AudioDecodeError as err:
        raise UnsupportedAudio(f"The audio could not be read: {err}.") from err
    if wav.size < SAMPLES_PER_VIDEO_FRAME:
        raise UnsupportedAudio(f"The audio is too short: {wav.size / SAMPLE_RATE:.3f} s; at least 0.04 s is needed.")
    return wav


async def render_offline(ctx: Context, avatar: AvatarState, wav: np.ndarray, options: SessionOptions) -> bytes:
    """Whole audio in, one MP4 out (fragmented, with its duration in the init segment)."""
    session = ctx.new_session(avatar, options)
    fragments: list[bytes] = []

    async def collect(item: bytes | dict[str, Any]) -> None:
        if isinstance(item, bytes):
            fragments.append(item)

    session.feed(wav)
    session.end()
    frames = await session.run(collect, init=False)
    return session.muxer.init_segment(total_frames=frames) + b"".join(fragments)


def create_app(settings: Settings) -> FastAPI:
    if settings.triton_url is None:
        raise ValueError("create_app needs settings.triton_url (python -m gateway up starts an embedded Triton)")
    triton_url = settings.triton_url

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        triton = TritonClient(triton_url, timeout_s=settings.triton_timeout_s, metrics=metrics)
        limits = AvatarLimits(settings.max_portrait_bytes, settings.max_portrait_pixels, settings.min_face_pixels)
        app.state.ctx = Context(settings, metrics, triton, AvatarStore(triton, limits, settings.avatar_cache))
        if settings.demo:
            log.warning("DEMO: the models do not run the official weights; the video is not a result of the models")
        yield
        await triton.close()

    app = FastAPI(title="lipsync-triton", version="0.1.0", lifespan=lifespan)

    def authorised(request: Request) -> None:
        if settings.auth_token and request.headers.get("authorization") != f"Bearer {settings.auth_token}":
            raise Unauthorized()

    Auth = Depends(authorised)

    @app.exception_handler(LipsyncError)
    async def lipsync_error(request: Request, err: LipsyncError) -> JSONResponse:
        request.app.state.ctx.metrics.errors.labels(err.code).inc()
        return JSONResponse(_error_body(err), status_code=HTTP_STATUS.get(err.code, 400))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", dependencies=[Auth])
    async def readyz(ctx: Ctx) -> JSONResponse:
        ok, reason = await ctx.triton.ready(SERVED_MODELS)
        return JSONResponse({"status": "ready" if ok else "unavailable", "reason": reason}, 200 if ok else 503)

    @app.get("/metrics", dependencies=[Auth])
    async def metrics(ctx: Ctx) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"The {what} is larger than the limit of {limit:,} bytes.")
        return data

    @app.post("/v1/avatars", dependencies=[Auth])
    async def create_avatar(ctx: Ctx, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        state = await ctx.avatars.add(await read_upload(image, settings.max_portrait_bytes, "portrait"))
        avatar = state.avatar
        height, width = avatar.image.shape[:2]
        return {
            "avatar_id": state.id,
            "width": width,
            "height": height,
            "box": list(avatar.box),
            "faces_seen": avatar.faces_seen,
            "demo": settings.demo,
        }

    @app.post("/v1/lipsync", dependencies=[Auth], response_class=Response)
    async def lipsync(
        ctx: Ctx,
        image: Annotated[UploadFile, File()],
        audio: Annotated[UploadFile, File()],
        pose: Literal["still", "audio"] = "still",
        enhance: bool = False,
        seed: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    ) -> Response:
        with ctx.session_slot():
            state = await ctx.avatars.add(await read_upload(image, settings.max_portrait_bytes, "portrait"))
            wav = _decode_audio(await read_upload(audio, settings.max_message_bytes, "audio file"), settings)
            options = Options(pose=pose, enhance=enhance, seed=seed)
            video = await render_offline(ctx, state, wav, options.session_options())
        return Response(video, media_type="video/mp4")

    @app.websocket("/ws/stream")
    async def stream(websocket: WebSocket) -> None:
        await _serve_ws(websocket, _stream)

    @app.websocket("/ws/lipsync")
    async def lipsync_ws(websocket: WebSocket) -> None:
        await _serve_ws(websocket, _lipsync_compat)

    async def _serve_ws(websocket: WebSocket, handler: Any) -> None:
        ctx: Context = websocket.app.state.ctx
        origin = websocket.headers.get("origin")
        if settings.allowed_origins and origin not in settings.allowed_origins:
            await websocket.close(code=4403, reason="origin not allowed")
            return
        await websocket.accept()
        try:
            token = websocket.query_params.get("token") or websocket.headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            if settings.auth_token and token != settings.auth_token:
                raise Unauthorized()
            await handler(ctx, websocket)
        except WebSocketDisconnect:
            log.info("client left %s", websocket.url.path)
        except LipsyncError as err:
            ctx.metrics.errors.labels(err.code).inc()
            log.info("session error %s: %s", err.code, err.message)
            await _close_with(websocket, err)
        except Exception:
            log.exception("session failed")
            ctx.metrics.errors.labels("internal").inc()
            with contextlib.suppress(Exception):
                await websocket.send_json({"type": "error", "code": "internal", "message": "Internal error."})
                await websocket.close(code=1011)

    async def _close_with(websocket: WebSocket, err: LipsyncError) -> None:
        if websocket.client_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            if websocket.url.path == "/ws/lipsync":
                await websocket.send_json({"status": "error", "message": err.message})
                await websocket.close(code=1000)
            else:
                await websocket.send_json({"type": "error", "code": err.code, "message": err.message})
                await websocket.close(code=CLOSE_CODES.get(err.code, 4400))

    async def _receive(websocket: WebSocket) -> dict[str, Any]:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
        if size > settings.max_message_bytes:
            raise TooLarge(f"A message of {size:,} bytes is over the limit of {settings.max_message_bytes:,} bytes.")
        return dict(message)

    async def _stream(ctx: Context, websocket: WebSocket) -> None:
        first = await _receive(websocket)
        if first.get("text") is None:
            raise BadMessage("The first message must be a JSON `start` message, not binary data.")
        start = parse_start(first["text"])
        state = ctx.avatars.get(start.avatar_id)
        if state is None:
            raise UnknownAvatar(start.avatar_id)
        with ctx.session_slot():
            session = ctx.new_session(state, start.options.session_options())
            session_id = uuid.uuid4().hex
            limits = {
                "max_message_bytes": settings.max_message_bytes,
                "max_session_seconds": settings.max_session_seconds,
            }
            await websocket.send_json({**session.ready_message(), "session_id": session_id, "limits": limits})
            log.info("session %s: avatar %s, %s", session_id, state.id[:12], start.options)

            async def send(item: bytes | dict[str, Any]) -> None:
                if isinstance(item, bytes):
                    await websocket.send_bytes(item)
                else:
                    await websocket.send_json(item)

            _, frames = await run_together(
                _receive_audio(websocket, session, start.audio.format, start.audio.sample_rate),
                session.run(send),
            )
            await websocket.send_json({"type": "end", "frames": frames, "duration": frames / 25})
            await websocket.close(code=1000)

    async def _receive_audio(websocket: WebSocket, session: StreamSession, audio_format: str, rate: int) -> None:
        decoder = PcmDecoder(rate) if audio_format == "pcm_s16le" else None
        file_bytes = bytearray()
        limit_samples = settings.max_session_seconds * SAMPLE_RATE
        while True:
            message = await _receive(websocket)
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
                session.feed(await asyncio.to_thread(_decode_audio, bytes(file_bytes), settings))
            session.end()
            return

    async def _lipsync_compat(ctx: Context, websocket: WebSocket) -> None:
        while True:
            message = await _receive(websocket)
            try:
                request = parse_lipsync(message.get("text") or "")
                try:
                    image = base64.b64decode(request.image, validate=True)
                    audio = base64.b64decode(request.audio, validate=True)
                except (binascii.Error, ValueError) as err:
                    raise BadMessage(f"`image` and `audio` must be base64 ({err}).") from err
                with ctx.session_slot():
                    state = await ctx.avatars.add(image)
                    wav = await asyncio.to_thread(_decode_audio, audio, settings)
                    video = await render_offline(ctx, state, wav, SessionOptions())
            except LipsyncError as err:
                ctx.metrics.errors.labels(err.code).inc()
                if isinstance(err, TooLarge | Busy | Unauthorized):
                    raise
                await websocket.send_json({"status": "error", "message": err.message})
                continue
            await websocket.send_json({"status": "success", "video": base64.b64encode(video).decode()})

    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app


def app_from_env() -> FastAPI:
    """The app configured from LIPSYNC_* variables (``uvicorn gateway.app:app_from_env --factory``)."""
    return create_app(Settings())
