"""One streaming session: audio in, fMP4 fragments out, Triton in between.

Tasks: the scheduler asks the timeline for work whenever something changes and starts the Triton calls;
render calls (several in flight, bounded) are awaited in chunk order by the writer, which pastes the faces
back, encodes in a worker thread and hands each fragment to ``send``. Any failure ends the whole session
(TaskGroup) and reaches the caller as one LipsyncError; other sessions are untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np

from gateway.audio_input import to_int16
from gateway.avatar_store import AvatarState
from gateway.engines import Engine
from gateway.errors import first_error
from gateway.metrics import Metrics
from gateway.muxer import FragmentedMp4Writer
from gateway.options import SessionOptions
from gateway.timeline import RenderRequest
from gateway.triton import TritonClient
from lipsync.audio import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)


Send = Callable[[bytes | dict[str, Any]], Awaitable[None]]


async def run_together(*coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run coroutines as one unit: the first failure cancels the others and is raised (unwrapped).

    The TaskGroup lives in a task of its own, so its cancellation of the parent never reaches the server's
    request task (anyio-driven servers do not expect a stray cancel/uncancel on their task). If this is
    cancelled before the group started them, the coroutines are closed, never left un-awaited.
    """

    async def group() -> list[Any]:
        try:
            async with asyncio.TaskGroup() as tasks:
                started = [tasks.create_task(c) for c in coroutines]
        except BaseExceptionGroup as error:
            raise first_error(error) from None
        return [task.result() for task in started]

    try:
        return await asyncio.create_task(group())
    finally:
        for coroutine in coroutines:
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                coroutine.close()


class StreamSession:
    """One session: audio in, the engine's Triton calls, fMP4 fragments out, in order."""

    def __init__(
        self,
        avatar: AvatarState,
        options: SessionOptions,
        engine: Engine,
        triton: TritonClient,
        metrics: Metrics,
        *,
        max_inflight: int = 3,
        demo: bool = False,
        observe: Callable[[RenderRequest, np.ndarray], None] | None = None,
    ) -> None:
        """The avatar's part for ``engine`` must be prepared (``Engine.prepare``). ``observe`` sees each chunk's
        rendered faces before paste-back and encoding (tests, debugging)."""
        self.avatar = avatar
        self.observe = observe
        self.options = options
        self.engine = engine
        self.seed = options.seed if options.seed is not None else random.randrange(2**31)
        self.metrics = metrics
        self.demo = demo
        self.engine_run = engine.start(avatar, options, triton, self.seed)
        self.timeline = self.engine_run.timeline
        width, height = avatar.framings[options.framing].size
        self.muxer = FragmentedMp4Writer(width, height, fps=FPS, sample_rate=SAMPLE_RATE)
        self._renders: asyncio.Queue[tuple[RenderRequest, asyncio.Task[np.ndarray]] | None] = asyncio.Queue(
            maxsize=max_inflight
        )
        self._wake = asyncio.Event()
        self._started = time.perf_counter()
        self._first_fragment_ms: float | None = None
        self.frames_sent = 0

    # ------------------------------------------------------------------------------------------- input

    def feed(self, samples: np.ndarray) -> None:
        self.timeline.add_audio(samples)
        self._wake.set()

    def end(self) -> None:
        self.timeline.finish()
        self._wake.set()

    def ready_message(self) -> dict[str, Any]:
        width, height = self.muxer.width, self.muxer.height
        run = self.engine_run
        return {
            "type": "ready",
            "engine": self.engine.name,
            "seed": self.seed,
            "mime_type": self.muxer.mime_type,
            "width": width,
            "height": height,
            "fps": FPS,
            # The models' own look-ahead, and the worst case: plus the rest of an audio block and of a chunk.
            "model_lookahead_ms": run.lookahead_ms,
            "lookahead_ms": run.lookahead_ms + (run.audio_block - 1 + self.options.chunk_frames - 1) * 1000 / FPS,
            "demo": self.demo,
        }

    # ------------------------------------------------------------------------------------------- the run

    async def run(self, send: Send, *, init: bool = True) -> int:
        """Render until the end of the audio; returns the number of frames sent."""
        if init:
            await send(self.muxer.init_segment())
        await run_together(self._schedule(), self._write(send))
        return self.frames_sent

    async def _schedule(self) -> None:
        # Calls run as tasks of this scheduler; a failed one ends the session through _check.
        pending: set[asyncio.Task[Any]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._check(pending)
                for call in self.engine_run.calls():
                    pending.add(asyncio.create_task(self._then_wake(call)))
                for render in self.engine_run.render_requests():
                    task = asyncio.create_task(self.engine_run.render(render))
                    await self._renders.put((render, task))
                if self.timeline.done:
                    await self._renders.put(None)
                    return
        finally:
            for task in pending:
                task.cancel()

    def _check(self, pending: set[asyncio.Task[Any]]) -> None:
        for task in [t for t in pending if t.done()]:
            pending.discard(task)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _then_wake(self, call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        finally:
            self._wake.set()  # a result, or a failure for the scheduler to raise

    async def _write(self, send: Send) -> None:
        try:
            await self._write_in_order(send)
        finally:
            while not self._renders.empty():  # render calls nobody will wait for any more
                item = self._renders.get_nowait()
                if item is not None:
                    item[1].cancel()

    async def _write_in_order(self, send: Send) -> None:
        while (item := await self._renders.get()) is not None:
            request, task = item
            issued = time.perf_counter()
            faces = await task
            if self.observe is not None:
                self.observe(request, faces)
            fragment = await asyncio.to_thread(self._encode, request, faces)
            await self._deliver(send, fragment, len(request.frames))
            self.metrics.chunk_latency.observe(time.perf_counter() - issued)
        tail = await asyncio.to_thread(self.muxer.finish, to_int16(self.timeline.audio_tail()))
        if tail:
            await send(tail)
        elapsed = time.perf_counter() - self._started
        if self.frames_sent and elapsed > 0:
            self.metrics.realtime_factor.observe(self.frames_sent / FPS / elapsed)

    def _encode(self, request: RenderRequest, faces: np.ndarray) -> bytes:
        frames = [self.engine_run.paste(face) for face in faces]
        return self.muxer.write_chunk(frames, to_int16(request.audio))

    async def _deliver(self, send: Send, fragment: bytes, frames: int) -> None:
        now = time.perf_counter()
        if self._first_fragment_ms is None:
            self._first_fragment_ms = 1e3 * (now - self._started)
            self.metrics.first_fragment.observe(now - self._started)
        await send(fragment)
        self.frames_sent += frames
        self.metrics.frames_rendered.inc(frames)
        heard = self.timeline.samples_heard / SAMPLE_RATE
        rendered = self.frames_sent / FPS
        await send(
            {
                "type": "stats",
                "frames": self.frames_sent,
                "audio_seconds": round(heard, 3),
                "rendered_seconds": round(rendered, 3),
                "render_fps": round(self.frames_sent / max(now - self._started, 1e-6), 2),
                "delay_ms": round(1e3 * max(heard - rendered, 0.0), 1),
                "first_fragment_ms": round(self._first_fragment_ms, 1),
            }
        )
