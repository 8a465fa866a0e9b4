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

    # The gateway's own HTTP server.
    host: str = "127.0.0.1"
    port: int = 8000
