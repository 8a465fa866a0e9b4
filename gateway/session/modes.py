"""Clip and conversation (docs/protocol.md §2b): what differs between a session's two modes, as two strategies.

A session holds one :class:`Mode`, chosen once from ``options.mode`` (:func:`mode_for`); the session core and the
route ask it instead of testing the mode. A clip feeds its audio straight to the timeline, is rendered as fast
as the audio arrives and ends when the audio does. A conversation queues its audio and plays it on the wall
clock (:class:`gateway.session.conversation.Conversation` decides what is played and when).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from gateway.errors import BadMessage
from gateway.session.clock import Clock
from gateway.session.conversation import FRAME_S, Conversation
from gateway.session.messages import Limits, PlayedSegment, Stats
from gateway.session.options import SessionOptions
from gateway.session.timeline import AudioTimeline
from gateway.settings import Settings
from lipsync.audio import FPS, SAMPLE_RATE

Wake = Callable[[], None]  # tells the session's scheduler that there may be work


class Mode(Protocol):
    @property
    def conversation(self) -> Conversation | None:
        """The conversation's state (tests and figures read it); None for a clip."""
        ...

    @property
    def queued_samples(self) -> int:
        """Audio received and not yet given to the timeline."""
        ...

    def feed(self, samples: np.ndarray) -> None: ...

    def end(self) -> None:
        """No more audio."""
        ...

    def utterance(self, utterance_id: str) -> None: ...

    def interrupt(self, cut: int) -> tuple[int, bool]:
        """Stop speaking at frame ``cut`` (the first not yet committed to the stream): the first frame that will
        be idle, and whether the frames from ``cut`` on are rendered again (True: drop what was made for them)."""
        ...

    def timeline(self) -> list[PlayedSegment] | None:
        """``end.timeline``: the audio played, where the mode has one to report."""
        ...

    def speed_warning(self, engine: str, render_fps: float | None) -> str | None:
        """What ``ready`` should warn of, given the engine's measured speed."""
        ...

    def limits(self, settings: Settings) -> Limits:
        """``ready.limits``; the route enforces the ``idle_timeout_s`` it announces (None: the session never idles
        out)."""
        ...

    def max_seconds(self, settings: Settings) -> float:
        """How long the session may last, in audio and in wall time from `ready`."""
        ...

    def begin(self, wake: Wake) -> list[Coroutine[Any, Any, None]]:
        """The run starts now: the coroutines that run beside the scheduler and the writer."""
        ...

    async def before_send(self, first_frame: int) -> None:
        """Wait until the fragment starting at ``first_frame`` may be sent."""
        ...

    def committed(self, frame: int) -> None:
        """Frames before ``frame`` are committed to the stream (encoding or sent): they will not change."""
        ...

    def annotate(self, stats: Stats, frames: range) -> Stats:
        """The stats message of the fragment of ``frames``, with what this mode adds."""
        ...


def mode_for(
    options: SessionOptions,
    timeline: AudioTimeline,
    *,
    clock: Clock,
    lookahead_ms: float,
    max_ahead_ms: float,
    margin_ms: float,
) -> Mode:
    """The session's mode; ``lookahead_ms`` is the audio a frame reads after its start (models and audio block)."""
    if options.mode == "conversation":
        return ConversationMode(
            Conversation(
                timeline,
                lookahead_ms=lookahead_ms,
                max_ahead_ms=max_ahead_ms,
                margin_ms=margin_ms,
                chunk_frames=options.chunk_frames,
            ),
            clock,
        )
    return ClipMode(timeline)


class ClipMode:
    """One audio stream, rendered as it arrives; `end` (or the idle limit) ends it."""

    conversation: None = None
    queued_samples = 0  # audio goes straight to the timeline

    def __init__(self, timeline: AudioTimeline) -> None:
        self._timeline = timeline

    def feed(self, samples: np.ndarray) -> None:
        self._timeline.add_audio(samples)

    def end(self) -> None:
        self._timeline.finish()

    def utterance(self, utterance_id: str) -> None:
        raise _clip_refuses("utterance")

    def interrupt(self, cut: int) -> tuple[int, bool]:
        raise _clip_refuses("interrupt")

    def timeline(self) -> None:
        return None

    def speed_warning(self, engine: str, render_fps: float | None) -> None:
        return None  # a clip is rendered as fast as the engine goes; nothing falls behind a clock

    def limits(self, settings: Settings) -> Limits:
        return Limits(
            max_message_bytes=settings.max_message_bytes,
            max_session_seconds=settings.max_session_seconds,
            max_conversation_seconds=None,
            idle_timeout_s=settings.idle_timeout_s,
            max_ahead_ms=None,
        )

    def max_seconds(self, settings: Settings) -> float:
        return settings.max_session_seconds  # the clip's audio is kept whole until it ends

    def begin(self, wake: Wake) -> list[Coroutine[Any, Any, None]]:
        return []

    async def before_send(self, first_frame: int) -> None:
        return None  # as soon as it is rendered

    def committed(self, frame: int) -> None:
        return None  # nothing is ever rendered again

    def annotate(self, stats: Stats, frames: range) -> Stats:
        return stats


def _clip_refuses(what: str) -> BadMessage:
    return BadMessage(f"`{what}` is a conversation-mode message; this session is a clip (mode `clip`).")


class ConversationMode:
    """The avatar on screen the whole session, on the wall clock from `ready`: audio queued and spoken in order,
    silence where none is due, interrupts; video at most ``max_ahead_ms`` ahead of the clock."""

    def __init__(self, conversation: Conversation, clock: Clock) -> None:
        self.conversation = conversation
        self._clock = clock
        # The clock starts now, as `ready` goes out: audio may arrive before the run has begun, and frames are
        # counted from here (from 0, it would look like hours of overdue silence).
        conversation.start_time = clock.now()
        conversation.timeline.hold_from(0)

    @property
    def queued_samples(self) -> int:
        return self.conversation.queued_samples

    def feed(self, samples: np.ndarray) -> None:
        self.conversation.feed(samples, self._clock.now())

    def end(self) -> None:
        self.conversation.end(self._clock.now())

    def utterance(self, utterance_id: str) -> None:
        self.conversation.utterance(utterance_id)

    def interrupt(self, cut: int) -> tuple[int, bool]:
        return self.conversation.interrupt(self._clock.now(), cut)

    def timeline(self) -> list[PlayedSegment]:
        return [segment.describe() for segment in self.conversation.segments]

    def speed_warning(self, engine: str, render_fps: float | None) -> str | None:
        if render_fps is None or render_fps >= FPS:
            return None
        return (
            f"This server renders the {engine} engine at about {render_fps:.1f} frames/s, slower than real "
            "time (25): the video will fall behind the conversation (see `behind_ms` in the stats); no audio "
            "is dropped."
        )

    def limits(self, settings: Settings) -> Limits:
        return Limits(
            max_message_bytes=settings.max_message_bytes,
            max_session_seconds=settings.max_session_seconds,
            max_conversation_seconds=settings.max_conversation_seconds,
            idle_timeout_s=None,  # a conversation idles by design
            max_ahead_ms=settings.max_ahead_ms,
        )

    def max_seconds(self, settings: Settings) -> float:
        return settings.max_conversation_seconds  # it runs in flat memory, so its cap is its own (hours)

    def begin(self, wake: Wake) -> list[Coroutine[Any, Any, None]]:
        return [self._pace(wake)]

    async def _pace(self, wake: Wake) -> None:
        """At every frame of the wall clock, admit queued audio and play silence for overdue frames (the clock
        decides, not the arrival of audio)."""
        conversation = self.conversation
        tick = 1  # frame boundaries of the wall clock, counted (not recomputed from a float time)
        while not conversation.timeline.finished:
            await self._clock.sleep_until(conversation.start_time + tick * FRAME_S)
            now = self._clock.now()
            tick = max(tick + 1, int((now - conversation.start_time) / FRAME_S) + 1)  # late: skip to the next
            conversation.advance(now)
            wake()

    async def before_send(self, first_frame: int) -> None:
        # Never more than max_ahead_ms of video ahead of the wall clock.
        await self._clock.sleep_until(self.conversation.send_time(first_frame))

    def committed(self, frame: int) -> None:
        self.conversation.timeline.hold_from(frame)  # an interrupt may cut here: keep what a rewind needs

    def annotate(self, stats: Stats, frames: range) -> Stats:
        now = self._clock.now()
        conversation = self.conversation
        # How far the video sent trails the wall clock (grows when the engine is slower than real time).
        shown = (now - conversation.start_time) * FPS
        return dataclasses.replace(
            stats,
            behind_ms=round(1e3 * max(shown - stats.frames, 0.0) / FPS, 1),
            queued_audio_seconds=round(conversation.queued_samples / SAMPLE_RATE, 3),
            utterances=conversation.first_frames_in(frames, now) or None,
        )
