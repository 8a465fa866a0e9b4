"""Operations: liveness, readiness, metrics, and what this server offers (``/v1/info``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gateway import __version__
from gateway.avatars.framing import FRAMINGS
from gateway.context import Ctx, default_options
from gateway.engines import takes_video
from gateway.engines.page import EnginePage, describe
from gateway.errors import InferenceUnavailable
from gateway.transport.http_errors import error_responses

router = APIRouter()


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str  # "ready" | "full" | "unavailable"
    reason: str


class Limits(BaseModel):
    max_sessions: int
    max_sessions_per_client: int
    max_session_seconds: float
    max_conversation_seconds: float
    max_sockets_per_client: int
    max_message_bytes: int
    max_portrait_bytes: int
    max_portrait_pixels: int
    idle_timeout_s: float
    start_timeout_s: float


class Info(BaseModel):
    version: str
    demo: bool  # True: random weights, the video is not a result of the models
    auth_required: bool
    engines: list[str]  # served now (empty while the inference server is unreachable)
    # Every engine of this gateway, served now or not: its label and its own options' controls (the page's).
    engine_options: dict[str, EnginePage]
    framings: list[str]
    limits: Limits


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers (open to probes, no token)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "every session slot is taken, or no engine is served"}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    """Readiness: a new session would be taken here — a slot is free, and an inference server has every model a
    session of some engine calls (and of which). A full gateway says ``full`` so that a load balancer that
    follows readiness (a Kubernetes Service) sends new sessions to another; its sessions carry on."""
    if ctx.slots.active >= ctx.slots.total:
        body = Readiness(status="full", reason=f"all {ctx.slots.total} session slots are taken")
        return JSONResponse(body.model_dump(), status_code=503)
    ready: list[str] = []
    not_ready: list[str] = []
    for name, engine in ctx.engines.items():
        ok, reason = await ctx.triton.ready(engine.models(default_options(engine)))
        (ready if ok else not_ready).append(f"{name}: {reason}")
    reason = "; ".join(ready) if ready else "; ".join(not_ready)
    body = Readiness(status="ready" if ready else "unavailable", reason=reason)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics of this gateway."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", responses=error_responses(403))
async def info(ctx: Ctx) -> Info:
    """What this server offers and its limits (public: the page reads it on load)."""
    s = ctx.settings
    limits = Limits(
        max_sessions=s.max_sessions,
        max_sessions_per_client=s.max_sessions_per_client,
        max_session_seconds=s.max_session_seconds,
        max_conversation_seconds=s.max_conversation_seconds,
        max_sockets_per_client=s.max_sockets_per_client,
        max_message_bytes=s.max_message_bytes,
        max_portrait_bytes=s.max_portrait_bytes,
        max_portrait_pixels=s.max_portrait_pixels,
        idle_timeout_s=s.idle_timeout_s,
        start_timeout_s=s.start_timeout_s,
    )
    try:
        served = [engine.name for engine in await ctx.served_engines()]
    except InferenceUnavailable:
        served = []
    return Info(
        version=__version__,
        demo=s.demo,
        auth_required=s.auth_token is not None,
        engines=served,
        engine_options={
            name: describe(name, engine.options_model, takes_video=takes_video(engine))
            for name, engine in ctx.engines.items()
        },
        framings=list(FRAMINGS),
        limits=limits,
    )
