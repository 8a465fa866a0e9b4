"""Prometheus metrics, one registry per app (so tests can build several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.active_sessions = Gauge("lipsync_active_sessions", "streaming sessions in progress", registry=r)
        self.frames_rendered = Counter("lipsync_frames_rendered", "video frames rendered and sent", registry=r)
        self.first_fragment = Histogram(
            "lipsync_first_fragment_seconds",
            "session start to first media fragment",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_latency = Histogram(
            "lipsync_chunk_seconds",
            "render call issued to fragment sent, per chunk",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.realtime_factor = Histogram(
            "lipsync_realtime_factor",
            "per finished session: seconds of video rendered per second of wall time",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
            registry=r,
        )
        self.triton_latency = Histogram(
            "lipsync_triton_call_seconds", "Triton call latency", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("lipsync_errors", "errors reported to clients, by code", ["code"], registry=r)
        self.shared_avatars_refused = Counter(
            "lipsync_shared_avatar_records_refused",
            "avatar records read from Redis and not used, by reason (signature, too_large, damaged)",
            ["reason"],
            registry=r,
        )
        self.clients_cut_off = Counter(
            "lipsync_clients_cut_off",
            "connections aborted because their client read nothing for LIPSYNC_SEND_TIMEOUT_S, by kind",
            ["kind"],
            registry=r,
        )
        # Per Triton endpoint (LIPSYNC_TRITON_URL may name several).
        self.triton_endpoint_calls = Counter(
            "lipsync_triton_endpoint_calls",
            "Triton calls by endpoint and outcome (ok, error, gone, busy)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.triton_endpoint_latency = Histogram(
            "lipsync_triton_endpoint_seconds",
            "Triton call latency by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_endpoint_in_flight = Gauge(
            "lipsync_triton_endpoint_in_flight", "Triton calls in flight by endpoint", ["endpoint"], registry=r
        )
        self.triton_endpoint_healthy = Gauge(
            "lipsync_triton_endpoint_healthy",
            "1 when the endpoint passed its last readiness check",
            ["endpoint"],
            registry=r,
        )
        self.triton_retries = Counter(
            "lipsync_triton_retries", "calls that succeeded on a second endpoint after the first went away", registry=r
        )


@dataclass
class RenderRates:
    """Frames per second each engine renders here, from the render calls of past sessions (a moving average).

    A conversation session is told at `ready` when its engine is slower than real time on this server.
    """

    weight: float = 0.2
    _rates: dict[str, float] = field(default_factory=dict)

    def observe(self, engine: str, frames: int, seconds: float) -> None:
        if seconds <= 0 or frames <= 0:
            return
        rate = frames / seconds
        previous = self._rates.get(engine)
        self._rates[engine] = rate if previous is None else (1 - self.weight) * previous + self.weight * rate

    def estimate(self, engine: str) -> float | None:
        return self._rates.get(engine)
