"""All configuration in one place: environment variables prefixed ``LIPSYNC_`` or a ``.env`` file."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger("lipsync.settings")

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_TOKEN_LENGTH = 16
# Settings whose value is never shown (a refusal names the variable and the rule, not what was given). A Redis URL
# may carry a password.
SECRET_SETTINGS = frozenset({"auth_token", "turn_secret", "avatar_signing_key", "redis_url"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIPSYNC_", env_file=".env", extra="ignore", populate_by_name=True)

    # Where things live.
    checkpoint_dir: Path = Field(REPO_ROOT / "checkpoints", description="official (or synthetic) weight files")
    artifacts_dir: Path = Field(REPO_ROOT / "artifacts", description="exported ONNX graphs and their sidecars")
    model_repository: Path = Field(REPO_ROOT / "model_repository", description="generated Triton repository")

    # Which weights: official checkpoints, or the demo (reduced architecture, random weights).
    demo: bool = Field(False, description="serve random weights of the reduced architecture; output is not a result")
    # The export's resolution (`python -m export … --size`), for the official models that come in two.
    render_size: Literal[256, 512] = Field(
        256,
        description="resolution of the rendered face, for official weights released in 256 and 512",
        validation_alias=AliasChoices("LIPSYNC_RENDER_SIZE", "LIPSYNC_SIZE"),  # the old name too
    )
    weights_mirror: str | None = Field(None, description="serves the official files by name instead of upstream")
    int8_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="embedded CPU server: models served from their int8 graphs, comma-separated (made once by "
        "`python -m export quantize`; docs/measurements.md); true: every model that has one",
        # The old yes/no variable of the one engine that had int8 graphs: still read, as `true`.
        validation_alias=AliasChoices("LIPSYNC_INT8_MODELS", "LIPSYNC_WAV2LIP_INT8"),
    )
    openvino_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="embedded CPU server: models run by OpenVINO instead of ONNX Runtime, comma-separated "
        "(with an int8 graph ≈ 2× faster; docs/measurements.md)",
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
    # Whoever can write to Redis could otherwise hand every gateway a forged avatar: records carry an HMAC.
    avatar_signing_key: str | None = Field(
        None,
        description="HMAC key for avatar records shared through Redis: the same secret on every gateway, at least "
        f"{MIN_TOKEN_LENGTH} characters (required with LIPSYNC_REDIS_URL)",
    )

    # Per Triton call, queueing included. Generous: on a CPU the full-size renderer takes seconds per frame and
    # a session keeps several chunk calls in flight; a dead server fails fast anyway (connection refused).
    triton_timeout_s: float = Field(600.0, gt=0, description="per Triton call, seconds")

    # The gateway's own HTTP server.
    host: str = Field("127.0.0.1", description="address the gateway listens on (0.0.0.0: all)")
    port: int = Field(8000, ge=1, le=65535, description="the gateway's HTTP port")
    web_dir: Path = Field(REPO_ROOT / "web", description="the browser page, served at /")

    # Streaming.
    # Smaller blocks mean less latency (a frame waits for its whole block's audio), more (cheap) calls.
    audio_block_frames: int = Field(
        4,
        ge=1,
        le=32,
        description="frames per audio-model call of a session (SadTalker's expression, Wav2Lip's mel blocks)",
        validation_alias=AliasChoices("LIPSYNC_AUDIO_BLOCK_FRAMES", "LIPSYNC_MOTION_BLOCK_FRAMES"),  # the old name too
    )
    max_inflight_renders: int = Field(3, ge=1, le=16, description="render calls in flight per session")
    # A long file makes thousands of motion/mel blocks ready at once: only this many go to Triton at a time.
    max_inflight_calls: int = Field(4, ge=1, le=64, description="motion and mel calls in flight per session")
    first_chunk_frames: int = Field(2, ge=1, le=25, description="frames of a session's first fragment")
    # Conversation mode (docs/protocol.md): video runs at most this far ahead of the wall clock, and a frame's
    # audio is replaced by silence this long after its due time (its frame time plus the engine's look-ahead).
    max_ahead_ms: float = Field(500.0, ge=40, le=10_000, description="conversation: video sent ahead of real time")
    audio_margin_ms: float = Field(120.0, ge=0, le=10_000, description="conversation: grace for late audio")

    # Limits: a request over a limit gets a clear refusal, never a hang.
    max_sessions: int = Field(8, ge=1, description="concurrent streaming sessions")
    max_sessions_per_client: int = Field(2, ge=1, description="concurrent sessions of one client address")
    max_session_seconds: float = Field(600.0, gt=0, description="audio per session")
    # A conversation (a voice agent's avatar) idles for hours in flat memory; its audio not yet played is
    # still bounded by max_session_seconds.
    max_conversation_seconds: float = Field(
        4 * 3600.0, gt=0, description="a conversation session's length in wall time (its played audio)"
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, description="one WebSocket message or upload")
    max_portrait_bytes: int = Field(20 * 1024 * 1024, gt=0, description="one portrait upload, bytes")
    # 25 MP holds a 6000×4000 photo; decoding one costs ≈ 75 MB, so a few at once cannot exhaust a gateway.
    max_portrait_pixels: int = Field(25_000_000, gt=0, description="one portrait, pixels (checked before decoding)")
    max_portrait_preparations: int = Field(
        2, ge=1, description="portraits decoded and prepared at once (the rest wait their turn)"
    )
    max_portrait_queue: int = Field(8, ge=0, description="portraits waiting their turn; more are refused as busy")
    # Video avatars (and videos to dub): kept per frame as JPEG at the output framings, ≈ 2-5 MB per second of
    # clip (docs/measurements.md), so the length bounds the memory as much as the bytes do.
    max_video_bytes: int = Field(64 * 1024 * 1024, gt=0, description="one video upload (avatar or dubbing), bytes")
    max_video_seconds: float = Field(20.0, gt=0, le=600, description="one video avatar or video to dub, seconds")
    max_video_pixels: int = Field(3840 * 2160, gt=0, description="one video frame, pixels (checked before decoding)")
    max_shared_video_mb: float = Field(
        64.0, gt=0, description="largest video avatar shared through Redis, MiB (larger ones stay with their gateway)"
    )
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
    # A client that stops reading (its TCP window closed) must not hold a connection or a slot: once the server's
    # buffer to it has been full this long, the connection is aborted.
    send_timeout_s: float = Field(10.0, gt=0, description="a client that reads nothing for this long is cut off")
    # The absolute cap on a session, whatever it waits on: its limit (of audio or wall time), then this long to
    # render and send what it has.
    drain_timeout_s: float = Field(
        300.0, gt=0, description="after a session's limit, time to finish rendering and sending"
    )

    # Access.
    auth_token: str | None = Field(
        None,
        min_length=MIN_TOKEN_LENGTH,
        description=f"if set, every endpoint but the page, /healthz and /v1/info needs `Authorization: Bearer …` "
        f"(at least {MIN_TOKEN_LENGTH} characters)",
    )
    allow_anonymous: bool = Field(
        False, description="serve a non-loopback address without LIPSYNC_AUTH_TOKEN (anyone who reaches it may use it)"
    )
    # Browsers send an Origin header: by default only the page's own origin may use the API; requests without
    # one (curl, SDKs, other servers) are not browsers and are allowed. List more origins here to widen it.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser Origins allowed besides our own, comma-separated"
    )
    # Behind a reverse proxy: the proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str | None = Field(None, description="trusted proxy addresses, comma-separated, or *")
    # DNS rebinding: a page whose name is made to resolve to this server is same-origin with it, so the Host a
    # request names must be ours: an IP address, a loopback name, or one listed here (`*.example.com` allowed).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="host names clients may use besides IP addresses and localhost"
    )
    max_sockets_per_client: int = Field(4, ge=1, description="open WebSockets of one client address")

    # WebRTC across NAT: STUN/TURN servers both sides use (docs/protocol.md §5). With a TURN secret (coturn's
    # static-auth-secret), each client gets credentials of its own that expire (the TURN REST API).
    ice_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="stun:/turn:/turns: URLs for WebRTC, comma-separated (none: host candidates)"
    )
    turn_secret: str | None = Field(None, description="coturn's static-auth-secret: time-limited TURN credentials")
    turn_ttl_s: int = Field(3600, ge=60, description="how long a client's TURN credentials last, seconds")

    @field_validator("auth_token", mode="before")
    @classmethod
    def _token_without_spaces_around(cls, value: Any) -> Any:
        """Spaces around a token (a newline from a file) are dropped: clients could not send them in a header
        anyway. What is left must still be long enough, so a token of spaces is refused."""
        if not isinstance(value, str):
            return value
        value = value.strip()
        if len(value) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the token has {len(value)} characters besides spaces: use a secret of at least {MIN_TOKEN_LENGTH} "
                "characters (e.g. `openssl rand -hex 24`)"
            )
        return value

    @field_validator("openvino_models", mode="before")
    @classmethod
    def _model_names(cls, value: Any) -> Any:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

    @field_validator("render_size", mode="before")
    @classmethod
    def _size_from_text(cls, value: Any) -> Any:
        # The environment gives text, and a Literal of ints takes no "512".
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("int8_models", mode="before")
    @classmethod
    def _int8_yes_no(cls, value: Any) -> Any:
        """``true``/``false`` (the old yes/no form): every model that has an int8 graph, or none."""
        if isinstance(value, str) and value.strip().lower() in _YES | _NO:
            value = value.strip().lower() in _YES
        if not isinstance(value, bool):
            return cls._model_names(value)
        if not value:
            return []
        every = list(_quantizable_models())
        log.warning(
            "int8 setting `true`: serving every model that has an int8 graph (%s); name them instead, as in "
            "LIPSYNC_INT8_MODELS=%s (the yes/no form is deprecated)",
            ", ".join(every) or "none",
            ",".join(every),
        )
        return every

    @field_validator("int8_models")
    @classmethod
    def _int8_known(cls, names: list[str]) -> list[str]:
        known = _quantizable_models() if names else ()
        if unknown := [name for name in names if name not in known]:
            raise ValueError(
                f"{', '.join(unknown)} cannot be served from an int8 graph: the models that can are "
                f"{', '.join(known) or 'none'} (LIPSYNC_INT8_MODELS)"
            )
        return names

    @field_validator("allowed_origins", "allowed_hosts", "ice_servers", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``a,b`` in the environment (a JSON list works too); normalised without a trailing slash."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list):
            return [str(v).strip().rstrip("/") for v in value if str(v).strip()]
        return value

    @model_validator(mode="after")
    def _not_open_by_accident(self) -> Settings:
        """A server others can reach needs a token, unless the operator says in so many words that it does not."""
        if self.auth_token is None and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"the gateway would listen on {self.host}, reachable from other machines, with no access token: "
                f"set LIPSYNC_AUTH_TOKEN to a secret of at least {MIN_TOKEN_LENGTH} characters (e.g. "
                "`openssl rand -hex 24`), or LIPSYNC_ALLOW_ANONYMOUS=true to serve everyone knowingly"
            )
        return self

    @model_validator(mode="after")
    def _shared_avatars_signed(self) -> Settings:
        """Shared avatar records are signed, so Redis needs the key. Checked here rather than on the field, so
        that a refused key is never echoed into the log."""
        key = self.avatar_signing_key
        if self.redis_url is not None and key is None:
            raise ValueError(
                "LIPSYNC_REDIS_URL is set but LIPSYNC_AVATAR_SIGNING_KEY is not: set it to the same secret of at "
                f"least {MIN_TOKEN_LENGTH} characters on every gateway (e.g. `openssl rand -hex 32`)"
            )
        if key is not None and len(key) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"LIPSYNC_AVATAR_SIGNING_KEY has {len(key)} characters: use a secret of at least {MIN_TOKEN_LENGTH} "
                "(e.g. `openssl rand -hex 32`)"
            )
        return self

    @field_validator("turn_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # compose passes an unset variable through as ""

    @model_validator(mode="after")
    def _ice_servers_are_urls(self) -> Settings:
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"LIPSYNC_ICE_SERVERS: {url!r} is not a stun:, turn: or turns: URL")
        if self.turn_secret is not None and len(self.turn_secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"LIPSYNC_TURN_SECRET must have at least {MIN_TOKEN_LENGTH} characters")
        return self


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: whatever it resolves to, treat it as reachable
        return False


_YES, _NO = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def _quantizable_models() -> tuple[str, ...]:
    # Imported here: the engines are not loaded to read settings that do not need them.
    from gateway.engines import quantizable_models

    return quantizable_models()
