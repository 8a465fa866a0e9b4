"""Conversation mode: the avatar is on screen the whole time, rendered on the wall clock, idle between
utterances, and an utterance can be interrupted.

The session's timeline (``gateway.session.timeline``) only ever sees *played* audio; this module decides what is
played and when:

- Received audio waits in a queue and is **admitted** to the timeline in order, no further ahead than the
  frames the session may send (``max_ahead_ms`` beyond the wall clock) need: a TTS burst is spoken in order,
  never sped up or dropped, and an interrupt has little admitted audio left to play.
- Frame ``n``'s audio is due at ``ready + n·40 ms + look-ahead + margin``. When it has not arrived by then,
  **silence** is played for it: the avatar idles (closed mouth, blinks) instead of freezing.
- An **interrupt** drops the queue and cuts the played audio at the first frame not yet committed to the
  stream, where the engine's timeline can rewind (Wav2Lip's): the frames from there on are rendered again as
  the avatar would with silence, so the lips stop at once. (The frames already sent whose look-ahead read the
  audio that was cut keep it: at most the engine's look-ahead.) Where it cannot (SadTalker's), the audio
  already admitted is played and the first idle frame is the first after it.

The played timeline is recorded as segments — speech (which received samples) and silence — so a session's
frames can be checked against an offline render of exactly that audio. It is compact: contiguous audio is one
segment, so an idle stretch of any length is one, and a session of hours keeps a few segments per utterance;
everything else (the timeline's buffers, the queue) holds only what the next frames need.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gateway.session.messages import PlayedSegment, SilenceSegment, SpeechSegment, UtteranceFirstFrame
from gateway.session.timeline import AudioTimeline
from lipsync.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

FRAME_S = SAMPLES_PER_VIDEO_FRAME / SAMPLE_RATE  # 0.04


@dataclass(slots=True)
class Segment:
    """A stretch of the played audio, in samples of the timeline: speech (from the received audio) or silence."""

    kind: str  # "speech" | "silence"
    start: int
    end: int
    received: int | None = None  # speech: where it starts in the received audio (all audio, in arrival order)
    utterance: str | None = None

    def describe(self) -> PlayedSegment:
        """This segment as ``end.timeline`` has it."""
        if self.kind == "silence":
            return SilenceSegment(start=self.start, end=self.end)
        assert self.received is not None  # speech always knows where it is in the received audio
        return SpeechSegment(start=self.start, end=self.end, received=self.received, utterance=self.utterance)


@dataclass
class _Piece:
    samples: np.ndarray
    received: int  # offset of its first sample in the received audio
    utterance: str | None


@dataclass(slots=True)
class Utterance:
    id: str
    first_byte: float  # clock time its first audio arrived
    first_frame: int | None = None  # the frame its first sample is played in, once admitted
    reported: bool = False


@dataclass
class Conversation:
    timeline: AudioTimeline
    lookahead_ms: float  # the audio a frame's models read after its start, and the rest of an audio block
    max_ahead_ms: float = 500.0
    margin_ms: float = 120.0
    # Frames a fragment holds: the one that starts at the send horizon ends this many frames later, and is rendered
    # only once their audio is played too.
    chunk_frames: int = 1
    start_time: float = 0.0  # the clock time of `ready`: frame n is shown at start_time + n·40 ms
    segments: list[Segment] = field(default_factory=list)
    utterances: dict[str, Utterance] = field(default_factory=dict)  # those whose first frame is not reported yet
    _used_ids: set[str] = field(default_factory=set)  # every utterance id of the session (ids are not reused)
    _queue: deque[_Piece] = field(default_factory=deque)
    _queued: int = 0  # samples in the queue
    _received: int = 0
    _utterance: str | None = None
    _ending: bool = False

    # ------------------------------------------------------------------------------------------- input

    def utterance(self, utterance_id: str) -> None:
        """The audio that follows belongs to this utterance (for its latency figures)."""
        if utterance_id in self._used_ids:
            raise ValueError(f"utterance id {utterance_id!r} was used before in this session")
        self._used_ids.add(utterance_id)
        self._utterance = utterance_id
        self.utterances[utterance_id] = Utterance(utterance_id, first_byte=math.inf)

    def feed(self, samples: np.ndarray, now: float) -> None:
        if samples.size == 0:
            return
        current = self.utterances.get(self._utterance or "")
        if current is not None and current.first_byte == math.inf:
            current.first_byte = now
        self._queue.append(_Piece(samples, self._received, self._utterance))
        self._received += samples.size
        self._queued += samples.size
        self.advance(now)

    def interrupt(self, now: float, cut: int) -> tuple[int, bool]:
        """Drop the audio not yet admitted, and the admitted audio from frame ``cut`` on where the timeline can
        rewind; the first frame that will be idle, and whether the timeline was rewound."""
        self._queue.clear()
        self._queued = 0
        self._utterance = None
        rewound = cut * SAMPLES_PER_VIDEO_FRAME < self.timeline.samples_heard and self.timeline.rewind(cut)
        if rewound:
            self._forget_after(cut * SAMPLES_PER_VIDEO_FRAME)
            # Speech is sent up to max_ahead_ms ahead of the clock, idle frames once their silence is overdue:
            # the cut can lie a second or more ahead of the idle schedule. The frames between are dropped (a
            # player jumps to the cut), so the clock moves on to the cut: the session goes on as an idle one
            # whose fragment at the cut is due now, and the idle frames after it follow at 25 frames/s. (Left
            # where it was, the first idle fragment went out at once and the next only once the clock caught
            # up: the page froze ≈ 1.5 s.)
            self.start_time = min(self.start_time, now - self._idle_render_clock(cut) * FRAME_S)
            self._silence(until=self._audio_for_fragment_at(cut))
        first_idle = cut if rewound else math.ceil(self.timeline.samples_heard / SAMPLES_PER_VIDEO_FRAME)
        self.advance(now)
        return first_idle, rewound

    def _forget_after(self, sample: int) -> None:
        """The played record and the utterances after a rewind to ``sample``: nothing from there was played."""
        while self.segments and self.segments[-1].start >= sample:
            self.segments.pop()
        if self.segments and self.segments[-1].end > sample:
            self.segments[-1].end = sample
        for utterance in list(self.utterances.values()):
            if utterance.first_frame is not None and utterance.first_frame * SAMPLES_PER_VIDEO_FRAME >= sample:
                del self.utterances[utterance.id]  # its first frame will never be shown

    def end(self, now: float) -> None:
        """No more audio: what is queued is still played, then the timeline ends."""
        self._ending = True
        self.advance(now)

    @property
    def queued_samples(self) -> int:
        return self._queued

    # ------------------------------------------------------------------------------------------- time

    def frames_shown_by(self, now: float) -> float:
        return (now - self.start_time) / FRAME_S

    def send_time(self, frame: int) -> float:
        """When the fragment that starts at ``frame`` may be sent: at most ``max_ahead_ms`` before it is shown."""
        return self.start_time + frame * FRAME_S - self.max_ahead_ms / 1000

    def advance(self, now: float) -> None:
        """Admit queued audio up to the horizon, then play silence for frames whose audio is overdue."""
        if self.timeline.finished:
            return
        self._admit(limit=self._admit_limit(now))
        overdue = math.floor(self.frames_shown_by(now) - self._overdue_after_frames)
        if not self._queue and not self._ending and overdue >= 0:
            self._silence(until=(overdue + 1) * SAMPLES_PER_VIDEO_FRAME)
        if self._ending and not self._queue:
            self.timeline.finish()

    def _admit_limit(self, now: float) -> int:
        """Samples the timeline may hold now: the audio of the fragments that may be sent (the last one starts at
        the horizon), and their look-ahead."""
        return self._audio_for_fragment_at(math.floor(self.frames_shown_by(now) + self.max_ahead_ms / 1000 / FRAME_S))

    @property
    def _overdue_after_frames(self) -> float:
        """How long after it is shown (in frames) a frame's audio is overdue and silence is played for it."""
        return (self.lookahead_ms + self.margin_ms) / 1000 / FRAME_S

    def _idle_render_clock(self, frame: int) -> float:
        """The clock, in frames, at which the idle fragment starting at ``frame`` can be rendered: its audio
        (:meth:`_audio_for_fragment_at`) is all overdue silence."""
        last_frame = self._audio_for_fragment_at(frame) // SAMPLES_PER_VIDEO_FRAME - 1
        return last_frame + self._overdue_after_frames

    def _audio_for_fragment_at(self, frame: int) -> int:
        """Samples a fragment that starts at ``frame`` needs played before it can be rendered: its
        ``chunk_frames`` frames and their look-ahead. (Short of this an interrupt's idle fragment, due at once,
        waited for its last frames' silence to come due: 1.6–1.9 s on the page.)"""
        lookahead_frames = math.ceil(self.lookahead_ms / 1000 / FRAME_S)
        return (frame + self.chunk_frames + lookahead_frames) * SAMPLES_PER_VIDEO_FRAME

    def _admit(self, limit: int) -> None:
        while self._queue and self.timeline.samples_heard < limit:
            piece = self._queue[0]
            take = min(piece.samples.size, limit - self.timeline.samples_heard)
            start = self.timeline.samples_heard
            self.timeline.add_audio(piece.samples[:take])
            self._queued -= take
            self._record("speech", start, start + take, piece.received, piece.utterance)
            utterance = self.utterances.get(piece.utterance or "")
            if utterance is not None and utterance.first_frame is None:
                utterance.first_frame = start // SAMPLES_PER_VIDEO_FRAME
            if take == piece.samples.size:
                self._queue.popleft()
            else:
                self._queue[0] = _Piece(piece.samples[take:], piece.received + take, piece.utterance)

    def _silence(self, until: int) -> None:
        start = self.timeline.samples_heard
        if until > start:
            self.timeline.add_audio(np.zeros(until - start, np.float32))
            self._record("silence", start, until)

    def _record(
        self, kind: str, start: int, end: int, received: int | None = None, utterance: str | None = None
    ) -> None:
        segment = Segment(kind, start, end, received, utterance)
        if self.segments and _continues(self.segments[-1], segment):
            self.segments[-1].end = end  # one segment however many pieces or idle frames it took
        else:
            self.segments.append(segment)

    # ------------------------------------------------------------------------------------------- figures

    def first_frames_in(self, frames: range, sent_at: float) -> list[UtteranceFirstFrame]:
        """Utterances whose first frame is in this fragment: their first-audio-to-first-frame latency."""
        figures = []
        for utterance in list(self.utterances.values()):
            if not utterance.reported and utterance.first_frame is not None and utterance.first_frame in frames:
                utterance.reported = True
                del self.utterances[utterance.id]  # reported once: nothing more to keep of it
                figures.append(
                    UtteranceFirstFrame(
                        utterance_id=utterance.id,
                        first_frame=utterance.first_frame,
                        first_frame_ms=round(1e3 * (sent_at - utterance.first_byte), 1),
                    )
                )
        return figures


def _continues(last: Segment, new: Segment) -> bool:
    if (last.kind, last.utterance, last.end) != (new.kind, new.utterance, new.start):
        return False
    if new.kind == "silence":
        return True
    return last.received is not None and last.received + (last.end - last.start) == new.received
