"""All configuration in one place: environment variables prefixed ``LIPSYNC_`` or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIPSYNC_", env_file=".env", extra="ignore")

    # Where things live.
    checkpoint_dir: Path = Field(REPO_ROOT / "checkpoints", description="official (or synthetic) weight files")
    artifacts_dir: Path = Field(REPO_ROOT / "artifacts", description="exported ONNX graphs and their sidecars")
    model_repository: Path = Field(REPO_ROOT / "model_repository", description="generated Triton repository")

    # Which weights: official checkpoints, or the demo (reduced architecture, random weights).
    demo: bool = Field(False, description="serve random weights of the reduced architecture; output is not a result")
    size: Literal[256, 512] = 256
    weights_mirror: str | None = Field(None, description="serves the official files by name instead of upstream")

    # Triton: None starts the embedded CPU server; a URL (host:port, gRPC) uses an external one.
    triton_url: str | None = None

    # Per Triton call, queueing included. Generous: on a CPU the full-size renderer takes seconds per frame and
    # a session keeps several chunk calls in flight; a dead server fails fast anyway (connection refused).
    triton_timeout_s: float = Field(600.0, gt=0, description="per Triton call, seconds")

    # The gateway's own HTTP server.
    host: str = "127.0.0.1"
    port: int = 8000
    web_dir: Path = Field(REPO_ROOT / "web", description="the browser page, served at /")

    # Streaming.
    # Smaller blocks mean less latency (a frame waits for its whole block's audio), more (cheap) calls.
    motion_block_frames: int = Field(4, ge=1, le=32, description="expression frames per motion call")
    max_inflight_renders: int = Field(3, ge=1, le=16, description="render calls in flight per session")

    # Limits: a request over a limit gets a clear refusal, never a hang.
    max_sessions: int = Field(8, ge=1, description="concurrent streaming sessions")
    max_session_seconds: float = Field(600.0, gt=0, description="audio per session")
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, description="one WebSocket message or upload")
    max_portrait_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_portrait_pixels: int = Field(40_000_000, gt=0)
    min_face_pixels: int = Field(64, gt=0, description="face width in pixels")
    avatar_cache: int = Field(64, ge=1, description="portraits kept in memory")

    # Access.
    auth_token: str | None = Field(None, description="if set, every endpoint needs `Authorization: Bearer …`")
    allowed_origins: list[str] = Field(default_factory=list, description="WebSocket Origins allowed; empty: any")
