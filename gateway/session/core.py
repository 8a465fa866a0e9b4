"""One streaming session: audio in, fMP4 fragments out, Triton in between.

Tasks: the scheduler asks the timeline for work whenever something changes and starts the Triton calls;
render calls (several in flight, bounded) are awaited in chunk order by the writer, which pastes the faces
back, encodes in a worker thread and hands each fragment to ``send``. Any failure ends the whole session
(TaskGroup) and reaches the caller as one LipsyncError; other sessions are untouched.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from gateway.avatars.store import AvatarState
from gateway.engines import Engine
from gateway.errors import BadMessage, first_error
from gateway.media import framecode
from gateway.media.audio_input import to_int16
from gateway.media.muxer import FragmentedMp4Writer
from gateway.metrics import Metrics, RenderRates
from gateway.session.clock import Clock, LoopClock
from gateway.session.conversation import Conversation
from gateway.session.messages import End, FirstFragmentParts, Interrupted, Limits, Message, PlayedSegment, Ready, Stats
from gateway.session.modes import Mode, mode_for
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.triton.client import TritonClient
from lipsync.audio import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)


Send = Callable[[bytes | Message], Awaitable[None]]  # a media segment, or a message for the transport to send


class FrameSink(Protocol):
    """Where a transport that sends frames itself (WebRTC) takes the session's video and audio, instead of fMP4
    fragments. It plays them in real time, so it can still drop what it has not begun to play."""

    mime_type: str  # what `ready` announces in place of the fMP4 codecs

    async def put(self, first_frame: int, frames: list[np.ndarray], audio: np.ndarray) -> None:
        """Queue one chunk (RGB frames, int16 16 kHz audio: 640 samples a frame); waits while the queue is full."""

    def finish(self, audio_tail: np.ndarray) -> None:
        """The audio after the last whole frame; nothing follows."""

    def cut_point(self, committed: int) -> int:
        """The first frame of the first chunk not yet begun (``committed`` when every chunk has begun)."""

    def drop_from(self, frame: int) -> int:
        """Drop the chunks from ``frame`` on (none begun); the number of frames dropped."""


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


def _discard(task: asyncio.Task[Any]) -> None:
    """A render nobody will use: cancelled if still running, its error (if any) retrieved and dropped."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


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
        max_inflight_calls: int = 4,
        demo: bool = False,
        observe: Callable[[RenderRequest, np.ndarray], None] | None = None,
        clock: Clock | None = None,
        max_ahead_ms: float = 500.0,
        audio_margin_ms: float = 120.0,
        rates: RenderRates | None = None,
        sink: FrameSink | None = None,
    ) -> None:
        """The avatar's part for ``engine`` must be prepared (``Engine.prepare``). ``observe`` sees each chunk's
        rendered faces before paste-back and encoding (tests, debugging). Conversation mode runs on ``clock``
        (the event loop's by default), sends at most ``max_ahead_ms`` of video ahead of it, and plays silence
        for audio ``audio_margin_ms`` past its due time (see ``gateway.session.conversation``). With a ``sink``
        the frames and audio go there, and ``send`` gets only messages."""
        self.avatar = avatar
        self.sink = sink
        self.observe = observe
        self.options = options
        self.engine = engine
        self.seed = options.seed if options.seed is not None else random.randrange(2**31)
        self.metrics = metrics
        self.demo = demo
        self.engine_run = engine.start(avatar, options, triton, self.seed)
        self.timeline = self.engine_run.timeline
        width, height = avatar.framings[options.framing].size
        if options.frame_code and (width < framecode.WIDTH or height < framecode.CELL):
            raise BadMessage(
                f"options.frame_code needs a video at least {framecode.WIDTH} pixels wide ({width}×{height})."
            )
        self.width, self.height = width, height
        # Render calls in chunk order, each with the generation it was made in: an interrupt that rewinds the
        # timeline starts a new one, and the writer drops what an older one made.
        self._renders: asyncio.Queue[tuple[int, RenderRequest, asyncio.Task[np.ndarray]] | None] = asyncio.Queue(
            maxsize=max_inflight
        )
        self._generation = 0
        self._committed = 0  # frames committed to the stream: being encoded, or sent
        self._wake = asyncio.Event()
        # The engine may make thousands of motion/mel calls ready at once (a long file): they wait here, so one
        # session never has more than this many at Triton.
        self._calls = asyncio.Semaphore(max_inflight_calls)
        self._started = time.perf_counter()
        self._first_fragment_ms: float | None = None
        self._first_parts: dict[str, float] = {}  # perf_counter times of the first fragment's steps
        self.frames_sent = 0
        self.finished = asyncio.Event()  # set when run() has sent everything
        self.rates = rates or RenderRates()
        self.clock = clock or LoopClock()
        # Clip or conversation: everything that differs between them (gateway.session.modes).
        self.mode: Mode = mode_for(
            options,
            self.timeline,
            clock=self.clock,
            lookahead_ms=self.engine_run.lookahead_ms + (self.engine_run.audio_block - 1) * 1000 / FPS,
            max_ahead_ms=max_ahead_ms,
            margin_ms=audio_margin_ms,
        )

    @functools.cached_property
    def muxer(self) -> FragmentedMp4Writer:
        """The fMP4 writer (H.264 and AAC encoders), made when first used: a session with a sink never uses it."""
        return FragmentedMp4Writer(self.width, self.height, fps=FPS, sample_rate=SAMPLE_RATE)

    @property
    def conversation(self) -> Conversation | None:
        """Conversation mode: what it has queued, played and reported; None for a clip."""
        return self.mode.conversation

    # ------------------------------------------------------------------------------------------- input

    def feed(self, samples: np.ndarray) -> None:
        self.mode.feed(samples)
        self._wake.set()

    def end(self) -> None:
        self.mode.end()
        self._wake.set()

    def utterance(self, utterance_id: str) -> None:
        """Conversation mode: the audio that follows is the utterance ``utterance_id``."""
        self.mode.utterance(utterance_id)

    def interrupt(self) -> Interrupted:
        """Conversation mode: drop the audio not yet played; the `interrupted` message (its first idle frame)."""
        # A sink can still take back the chunks it has not begun to play: the cut may be before what it holds.
        cut = self._committed if self.sink is None else self.sink.cut_point(self._committed)
        first_idle, rewound = self.mode.interrupt(cut)
        if rewound:  # the frames from the cut are rendered again: what was made for them is dropped
            self._generation += 1
            self._drop_renders()
            if self.sink is not None:
                self.frames_sent -= self.sink.drop_from(cut)
            self._committed = cut
        self._wake.set()
        return Interrupted(frame=first_idle, next_frame=self._committed if rewound else self.frames_sent)

    def _drop_renders(self) -> None:
        while not self._renders.empty():
            item = self._renders.get_nowait()
            if item is not None:
                _discard(item[2])
            else:  # the end marker stays last
                self._renders.put_nowait(None)
                break

    def played_segments(self) -> list[PlayedSegment]:
        """Conversation mode: the audio the session played, as speech and silence segments (16 kHz samples)."""
        return self.mode.timeline() or []

    # ------------------------------------------------------------------------------------------- messages

    def ready_message(self, session_id: str, limits: Limits) -> Ready:
        run = self.engine_run
        rate = self.rates.estimate(self.engine.name)  # what this server has measured of the engine's speed
        return Ready(
            engine=self.engine.name,
            seed=self.seed,
            mime_type=self.muxer.mime_type if self.sink is None else self.sink.mime_type,
            width=self.width,
            height=self.height,
            fps=FPS,
            mode=self.options.mode,
            render_fps_estimate=None if rate is None else round(rate, 1),
            warning=self.mode.speed_warning(self.engine.name, rate),
            # The models' own look-ahead, and the worst case: plus the rest of an audio block and of a chunk.
            model_lookahead_ms=run.lookahead_ms,
            lookahead_ms=run.lookahead_ms + (run.audio_block - 1 + self.options.chunk_frames - 1) * 1000 / FPS,
            demo=self.demo,
            session_id=session_id,
            limits=limits,
        )

    def end_message(self) -> End:
        """After the last fragment: the frames sent, and what the mode reports of the audio played."""
        return End(frames=self.frames_sent, duration=self.frames_sent / FPS, timeline=self.mode.timeline())

    # ------------------------------------------------------------------------------------------- the run

    async def run(self, send: Send, *, init: bool = True) -> int:
        """Render until the end of the audio; returns the number of frames sent."""
        if init and self.sink is None:
            await send(self.muxer.init_segment())
        await run_together(self._schedule(), self._write(send), *self.mode.begin(self._wake.set))
        self.finished.set()
        return self.frames_sent

    async def _schedule(self) -> None:
        # Calls run as tasks of this scheduler; a failed one ends the session through _check.
        pending: dict[asyncio.Task[Any], Coroutine[Any, Any, None]] = {}
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._check(pending)
                for call in self.engine_run.calls():
                    pending[asyncio.create_task(self._then_wake(call))] = call
                generation = self._generation
                for render in self.engine_run.render_requests():
                    task = asyncio.create_task(self._render(render))
                    await self._renders.put((generation, render, task))
                if self.timeline.done:
                    await self._renders.put(None)
                    return
        finally:
            # Calls still out (an interrupt's rewind leaves some whose answers are no longer needed): a task
            # cancelled before it ran never closes its call, so close those here.
            for task, call in pending.items():
                task.cancel()
                if inspect.getcoroutinestate(call) == inspect.CORO_CREATED:
                    call.close()

    def _check(self, pending: dict[asyncio.Task[Any], Coroutine[Any, Any, None]]) -> None:
        for task in [t for t in pending if t.done()]:
            del pending[task]
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _render(self, request: RenderRequest) -> np.ndarray:
        issued = time.perf_counter()
        faces = await self.engine_run.render(request)
        rendered = time.perf_counter()
        self.rates.observe(self.engine.name, len(request.frames), rendered - issued)
        if request.chunk == 0:
            self._first_parts |= {"issued": issued, "rendered": rendered}
        return faces

    async def _then_wake(self, call: Coroutine[Any, Any, None]) -> None:
        try:
            async with self._calls:
                await call
        finally:
            if inspect.getcoroutinestate(call) == inspect.CORO_CREATED:  # cancelled while waiting its turn
                call.close()
            self._wake.set()  # a result, or a failure for the scheduler to raise

    async def _write(self, send: Send) -> None:
        try:
            await self._write_in_order(send)
        finally:
            self._drop_renders()  # render calls nobody will wait for any more

    async def _write_in_order(self, send: Send) -> None:
        while (item := await self._renders.get()) is not None:
            generation, request, task = item
            issued = time.perf_counter()
            await asyncio.wait({task})
            if generation == self._generation:  # waits for its send time (conversation mode)
                await self.mode.before_send(request.frames.start)
            if generation != self._generation or task.cancelled():  # an interrupt rewound past it while it waited
                _discard(task)
                continue
            faces = task.result()  # the render's error, if it failed, ends the session
            if self.sink is None:
                # Committed from here: an interrupt now cuts after these frames.
                self._committed = request.frames.stop
                self.mode.committed(self._committed)
            if self.observe is not None:
                self.observe(request, faces)
            if self.sink is None:
                fragment: bytes | None = await asyncio.to_thread(self._encode, request, faces)
            else:
                frames = await asyncio.to_thread(self._paste, request, faces)
                if generation != self._generation:  # an interrupt cut before these frames while they were pasted
                    continue
                await self.sink.put(request.frames.start, frames, to_int16(request.audio))
                if generation != self._generation:  # cut while put() waited for room: take them back, unplayed
                    self.sink.drop_from(request.frames.start)
                    continue
                fragment = None
                # Committed: an interrupt now cuts at the first chunk the sink has not begun to play.
                self._committed = request.frames.stop
                self.mode.committed(self.sink.cut_point(self._committed))
            if request.chunk == 0:
                self._first_parts["encoded"] = time.perf_counter()
            await self._deliver(send, fragment, request.frames)
            self.metrics.chunk_latency.observe(time.perf_counter() - issued)
        tail_audio = to_int16(self.timeline.audio_tail())
        if self.sink is not None:
            self.sink.finish(tail_audio)
        elif tail := await asyncio.to_thread(self.muxer.finish, tail_audio):
            await send(tail)
        elapsed = time.perf_counter() - self._started
        if self.frames_sent and elapsed > 0:
            self.metrics.realtime_factor.observe(self.frames_sent / FPS / elapsed)

    def _paste(self, request: RenderRequest, faces: np.ndarray) -> list[np.ndarray]:
        # Fresh frames (drawing on them is safe); a video avatar's picture depends on the frame's number.
        frames = [self.engine_run.paste(face, number) for face, number in zip(faces, request.frames, strict=True)]
        if self.options.frame_code:
            for number, frame in zip(request.frames, frames, strict=True):
                framecode.draw(frame, number)
        return frames

    def _encode(self, request: RenderRequest, faces: np.ndarray) -> bytes:
        return self.muxer.write_chunk(self._paste(request, faces), to_int16(request.audio))

    async def _deliver(self, send: Send, fragment: bytes | None, frames: range) -> None:
        first = self._first_fragment_ms is None
        if fragment is not None:
            await send(fragment)
        now = time.perf_counter()
        if first:
            self._first_fragment_ms = 1e3 * (now - self._started)
            self.metrics.first_fragment.observe(now - self._started)
        self.frames_sent += len(frames)
        self.metrics.frames_rendered.inc(len(frames))
        heard = self.timeline.samples_heard / SAMPLE_RATE
        rendered = self.frames_sent / FPS
        stats = Stats(
            frames=self.frames_sent,
            audio_seconds=round(heard, 3),
            rendered_seconds=round(rendered, 3),
            render_fps=round(self.frames_sent / max(now - self._started, 1e-6), 2),
            delay_ms=round(1e3 * max(heard - rendered, 0.0), 1),
            first_fragment_ms=round(self._first_fragment_ms or 0.0, 1),
            first_fragment_parts=self._first_fragment_parts(now) if first else None,
        )
        await send(self.mode.annotate(stats, frames))

    def _first_fragment_parts(self, sent: float) -> FirstFragmentParts:
        """Where the time to the first fragment went: waiting for audio (the first chunk's frames and the models'
        look-ahead, and the audio models), Triton's render call, paste-back + encoding, sending."""
        parts = self._first_parts
        issued, rendered, encoded = parts.get("issued", sent), parts.get("rendered", sent), parts.get("encoded", sent)
        run = self.engine_run
        first_chunk = self.options.first_chunk_frames or self.options.chunk_frames
        return FirstFragmentParts(
            audio_lookahead_ms=round((first_chunk + run.audio_block - 1) * 1000 / FPS + run.lookahead_ms, 1),
            waiting_for_audio_ms=round(1e3 * (issued - self._started), 1),
            triton_ms=round(1e3 * (rendered - issued), 1),
            encode_ms=round(1e3 * (encoded - rendered), 1),
            send_ms=round(1e3 * (sent - encoded), 1),
        )
