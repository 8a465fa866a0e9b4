"""All configuration in one place: environment variables prefixed ``LIPSYNC_`` or a ``.env`` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIPSYNC_", env_file=".env", extra="ignore")

    # Where things live.
    checkpoint_dir: Path = Field(REPO_ROOT / "checkpoints", description="official (or synthetic) weight files")
    artifacts_dir: Path = Field(REPO_ROOT / "artifacts", description="exported ONNX graphs and their sidecars")
    model_repository: Path = Field(REPO_ROOT / "model_repository", description="generated Triton repository")

    # Which weights: official checkpoints, or the demo (reduced architecture, random weights).
    demo: bool = Field(False, description="serve random weights of the reduced architecture; output is not a result")
    size: Literal[256, 512] = Field(256, description="SadTalker renderer size (official weights)")
    weights_mirror: str | None = Field(None, description="serves the official files by name instead of upstream")
    wav2lip_int8: bool = Field(
        False, description="embedded CPU server: Wav2Lip from its int8 graph (≈ 1.6× faster; export/quantize.py)"
    )

    # Triton: None starts the embedded CPU server; a URL (host:port, gRPC) uses an external one.
    triton_url: str | None = Field(
        None,
        description="Triton gRPC endpoints: host:port, a comma-separated list, or dns://name:port (every address "
        "the name resolves to); unset: the embedded server",
    )
    triton_health_interval_s: float = Field(2.0, gt=0, description="seconds between Triton readiness checks")
    triton_dns_refresh_s: float = Field(10.0, gt=0, description="seconds between resolutions of a dns:// name")

    # Shared avatars: set, every gateway of a fleet serves avatars uploaded through any other.
    redis_url: str | None = Field(None, description="redis://host:port/db for shared avatar records; unset: none")
    redis_ttl_s: float = Field(24 * 3600.0, gt=0, description="how long an unused shared avatar record lives")

    # Per Triton call, queueing included. Generous: on a CPU the full-size renderer takes seconds per frame and
    # a session keeps several chunk calls in flight; a dead server fails fast anyway (connection refused).
    triton_timeout_s: float = Field(600.0, gt=0, description="per Triton call, seconds")

    # The gateway's own HTTP server.
    host: str = Field("127.0.0.1", description="address the gateway listens on (0.0.0.0: all)")
    port: int = Field(8000, ge=1, le=65535, description="the gateway's HTTP port")
    web_dir: Path = Field(REPO_ROOT / "web", description="the browser page, served at /")

    # Streaming.
    # Smaller blocks mean less latency (a frame waits for its whole block's audio), more (cheap) calls.
    motion_block_frames: int = Field(4, ge=1, le=32, description="expression frames per motion call")
    max_inflight_renders: int = Field(3, ge=1, le=16, description="render calls in flight per session")
    first_chunk_frames: int = Field(2, ge=1, le=25, description="frames of a session's first fragment")
    # Conversation mode (docs/protocol.md): video runs at most this far ahead of the wall clock, and a frame's
    # audio is replaced by silence this long after its due time (its frame time plus the engine's look-ahead).
    max_ahead_ms: float = Field(500.0, ge=40, le=10_000, description="conversation: video sent ahead of real time")
    audio_margin_ms: float = Field(120.0, ge=0, le=10_000, description="conversation: grace for late audio")

    # Limits: a request over a limit gets a clear refusal, never a hang.
    max_sessions: int = Field(8, ge=1, description="concurrent streaming sessions")
    max_sessions_per_client: int = Field(2, ge=1, description="concurrent sessions of one client address")
    max_session_seconds: float = Field(600.0, gt=0, description="audio per session")
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, description="one WebSocket message or upload")
    max_portrait_bytes: int = Field(20 * 1024 * 1024, gt=0, description="one portrait upload, bytes")
    max_portrait_pixels: int = Field(40_000_000, gt=0, description="one portrait, pixels")
    min_face_pixels: int = Field(64, gt=0, description="face width in pixels")
    avatar_cache_mb: float = Field(256.0, gt=0, description="memory for cached avatars (framings, crops), MiB")
    max_output_side: int = Field(1280, ge=64, le=4096, description="long side of the `portrait` framing, pixels")

    # Time limits: no client holds a slot, a socket or a connection by doing nothing.
    start_timeout_s: float = Field(10.0, gt=0, description="a WebSocket must send its first message within this")
    idle_timeout_s: float = Field(30.0, gt=0, description="a clip session ends after this long without audio")
    header_timeout_s: float = Field(10.0, gt=0, description="an HTTP request's headers must arrive within this")
    body_timeout_s: float = Field(
        120.0, gt=0, description="an HTTP request's body must arrive within this after its headers"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive HTTP connection is closed after")

    # Access.
    auth_token: str | None = Field(None, description="if set, every endpoint needs `Authorization: Bearer …`")
    # Browsers send an Origin header: by default only the page's own origin may use the API; requests without
    # one (curl, SDKs, other servers) are not browsers and are allowed. List more origins here to widen it.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser Origins allowed besides our own, comma-separated"
    )
    # Behind a reverse proxy: the proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str | None = Field(None, description="trusted proxy addresses, comma-separated, or *")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``a,b`` in the environment (a JSON list works too); normalised without a trailing slash."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list):
            return [str(v).strip().rstrip("/") for v in value if str(v).strip()]
        return value
