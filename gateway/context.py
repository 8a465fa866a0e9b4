"""What every route shares: settings, metrics, the Triton client, the avatar store and the session slots."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from gateway.avatars.store import AvatarState, AvatarStore
from gateway.engines import Engine, takes_video
from gateway.errors import Busy, EngineUnavailable, PhotosOnly, SessionLimit
from gateway.metrics import Metrics, RenderRates
from gateway.session.clock import Clock, LoopClock
from gateway.session.core import FrameSink, StreamSession
from gateway.session.options import SessionOptions
from gateway.settings import Settings
from gateway.transport.access import client_of
from gateway.triton.client import TritonClient


@dataclass
class SessionSlots:
    """Concurrent sessions: at most ``total`` in all and ``per_client`` for one client (its address).

    One client opening many idle sockets must not lock everyone else out: its own limit is hit first.
    """

    total: int
    per_client: int
    metrics: Metrics
    _by_client: Counter[str] = field(default_factory=Counter)

    @property
    def active(self) -> int:
        return sum(self._by_client.values())

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        if self.active >= self.total:
            raise Busy(self.total)
        if self._by_client[client] >= self.per_client:
            raise SessionLimit(self.per_client)
        self._by_client[client] += 1
        self.metrics.active_sessions.inc()
        try:
            yield
        finally:
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]
            self.metrics.active_sessions.dec()


def client_key(connection: HTTPConnection) -> str:
    """Who a request comes from, for per-client limits (see :func:`gateway.transport.access.client_of`)."""
    return client_of(connection.scope)


@dataclass
class Context:
    settings: Settings
    metrics: Metrics
    triton: TritonClient
    avatars: AvatarStore
    slots: SessionSlots
    engines: dict[str, Engine]
    clock: Clock = field(default_factory=LoopClock)  # conversation sessions run on it
    rates: RenderRates = field(default_factory=RenderRates)

    @property
    def active_sessions(self) -> int:
        return self.slots.active

    async def served(self, engine: Engine, options: SessionOptions) -> None:
        """Raise EngineUnavailable (in words) unless Triton serves every model a session of ``engine`` calls."""
        missing = await self.triton.missing(engine.models(options))
        if missing:
            raise EngineUnavailable(engine.name, f"not served: {', '.join(missing)}")

    async def served_engines(self) -> list[Engine]:
        """The engines whose models (default options) Triton serves now; InferenceUnavailable if unreachable."""
        return [e for e in self.engines.values() if not await self.triton.missing(e.models(default_options(e)))]

    async def prepare(self, avatar: AvatarState, engine: Engine) -> None:
        """The avatar's part for ``engine``, completed once (and counted in the cache's budget)."""
        before = avatar.parts.get(engine.name)
        await engine.prepare(avatar, self.triton)  # a no-op when it is complete
        if avatar.parts.get(engine.name) is not before:
            await self.avatars.updated(avatar)

    async def new_session(
        self, avatar: AvatarState, options: SessionOptions, sink: FrameSink | None = None
    ) -> StreamSession:
        engine = self.engines[options.engine]
        if avatar.clip is not None and not takes_video(engine):
            raise PhotosOnly(engine.name, [e.name for e in self.engines.values() if takes_video(e)])
        await self.served(engine, options)
        await self.prepare(avatar, engine)
        if options.first_chunk_frames is None:
            options = dataclasses.replace(options, first_chunk_frames=self.settings.first_chunk_frames)
        return StreamSession(
            avatar,
            options,
            engine,
            self.triton,
            self.metrics,
            max_inflight=self.settings.max_inflight_renders,
            max_inflight_calls=self.settings.max_inflight_calls,
            demo=self.settings.demo,
            clock=self.clock,
            max_ahead_ms=self.settings.max_ahead_ms,
            audio_margin_ms=self.settings.audio_margin_ms,
            rates=self.rates,
            sink=sink,
        )


def default_options(engine: Engine) -> SessionOptions:
    """A session of ``engine`` with its default options (which models a default session needs)."""
    return SessionOptions(engine.options_model.model_validate({}))


def context_of(connection: HTTPConnection) -> Context:
    ctx: Context = connection.app.state.ctx
    return ctx


def _context(request: Request) -> Context:
    return context_of(request)


# Handlers take the app's Context through this dependency.
Ctx = Annotated[Context, Depends(_context)]
