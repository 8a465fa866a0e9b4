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
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gateway.audio_input import to_int16
from gateway.avatar_store import AvatarState
from gateway.errors import InferenceUnavailable, first_error
from gateway.metrics import Metrics
from gateway.muxer import FragmentedMp4Writer
from gateway.pasteback import PasteBack
from gateway.timeline import MotionRequest, PoseRequest, RenderRequest, Timeline
from gateway.triton import TritonClient
from lipsync.audio import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

# Audio a frame waits for beyond its own: the mapping window (13 frames) and the mel window of the last of
# them (≈ 92.5 ms + the 40 ms granularity of whole frames); in pose mode `audio` also the rest of a 32-frame
# pose window and 6 frames of smoothing.
LOOKAHEAD_MS = {"still": 13 * 40 + 92.5 + 40, "audio": (31 + 6 + 13) * 40 + 92.5 + 40}

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


@dataclass(frozen=True)
class SessionOptions:
    pose: Literal["still", "audio"] = "still"
    enhance: bool = False
    expression_scale: float = 1.0
    pose_style: int = 0
    blink: bool = True
    seed: int | None = None
    chunk_frames: int = 8
    framing: Literal["portrait", "face"] = "portrait"


class StreamSession:
    def __init__(
        self,
        avatar: AvatarState,
        options: SessionOptions,
        triton: TritonClient,
        metrics: Metrics,
        *,
        motion_block: int = 4,
        max_inflight: int = 3,
        demo: bool = False,
        observe: Callable[[RenderRequest, np.ndarray], None] | None = None,
    ) -> None:
        """``observe`` sees each chunk's rendered faces before paste-back and encoding (tests, debugging)."""
        self.avatar = avatar
        self.observe = observe
        self.options = options
        self.seed = options.seed if options.seed is not None else random.randrange(2**31)
        self.triton = triton
        self.metrics = metrics
        self.demo = demo
        self.motion_block = motion_block
        self.timeline = Timeline(
            avatar.source,
            options.pose,
            options.expression_scale,
            options.blink,
            self.seed,
            chunk_frames=options.chunk_frames,
            motion_block=motion_block,
        )
        framing = avatar.framings[options.framing]
        width, height = framing.size
        self.muxer = FragmentedMp4Writer(width, height, fps=FPS, sample_rate=SAMPLE_RATE)
        self.paste = PasteBack(framing.image, framing.box(avatar.box))
        self._source_image = avatar.source_image
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
        return {
            "type": "ready",
            "seed": self.seed,
            "mime_type": self.muxer.mime_type,
            "width": width,
            "height": height,
            "fps": FPS,
            # Worst case: the models' look-ahead, plus waiting for the rest of a chunk and of an expression block.
            "lookahead_ms": LOOKAHEAD_MS[self.options.pose]
            + (self.options.chunk_frames - 1 + self.motion_block - 1) * 1000 / FPS,
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
                for motion in self.timeline.motion_requests():
                    pending.add(asyncio.create_task(self._motion(motion)))
                for pose in self.timeline.pose_requests():
                    pending.add(asyncio.create_task(self._pose(pose)))
                for render in self.timeline.render_requests():
                    task = asyncio.create_task(self._render(render))
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

    async def _motion(self, request: MotionRequest) -> None:
        try:
            await self._motion_call(request)
        finally:
            self._wake.set()  # a result, or a failure for the scheduler to raise

    async def _pose(self, request: PoseRequest) -> None:
        try:
            await self._pose_call(request)
        finally:
            self._wake.set()

    async def _motion_call(self, request: MotionRequest) -> None:
        out = await self.triton.infer(
            "motion",
            {
                "signal": request.span.signal,
                "mel_index": request.span.mel_index,
                "ref_exp": request.ref_exp,
                "ratio": request.ratio,
            },
            ["exp"],
        )
        self.timeline.set_exp(request, out["exp"])

    async def _pose_call(self, request: PoseRequest) -> None:
        mel = (await self.triton.infer("mel", {"signal": request.span.signal}, ["mel"]))["mel"][0]
        windows = mel[request.span.mel_index].transpose(0, 2, 1)[None, :, None]  # (1, 32, 1, 80, 16)
        out = await self.triton.infer(
            "audio2pose",
            {
                "mels": np.ascontiguousarray(windows),
                "z": request.z,
                "pose_style": np.array([[self.options.pose_style]], dtype=np.int64),  # (batch 1, 1)
                "ref_pose": self.avatar.source[None, 64:70],
            },
            ["motion"],
        )
        self.timeline.set_pose_motion(request, out["motion"][0])

    async def _render(self, request: RenderRequest) -> np.ndarray:
        k = len(request.frames)
        model = "render_enhanced" if self.options.enhance else "render"
        out = await self.triton.infer(
            model,
            {
                "window": request.windows,
                "kp_canonical": np.repeat(self.avatar.kp_canonical, k, axis=0),
                "source_image": np.repeat(self._source_image, k, axis=0),
                "kp_source": np.repeat(self.avatar.kp_source, k, axis=0),
            },
            ["face"],
        )
        faces = out["face"]
        if faces.shape[0] != k:
            raise InferenceUnavailable(f"{model} answered {faces.shape[0]} faces for {k} frames")
        return faces

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
        frames = [self.paste(face) for face in faces]
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
