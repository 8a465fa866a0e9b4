"""The streaming timelines: what can be computed now, for a session whose audio keeps arriving.

Pure and synchronous: the session feeds audio in, asks for the next requests, runs them on Triton and hands
the results back. Every request is a function of fixed-grid positions and, at the end only, of the clip's
length — never of when audio arrived or of the chunk size — so a stream renders exactly the frames of a
whole-clip run (``export.engines.<name>.reference``).

:class:`AudioTimeline` is what every engine's timeline builds on: the audio received, the end, the mel spans
that can no longer change, and the render chunks (the first may be shorter: see ``first_chunk_frames``). Each
engine subclasses it in its own package (``gateway.engines.<name>.timeline``) with the requests its models need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lipsync.audio import (
    HOP,
    N_FFT,
    SAMPLES_PER_VIDEO_FRAME,
    num_mel_frames,
    preemphasis,
    signal_span_for_mel_frames,
)

PAD = N_FFT // 2  # the centred STFT's zero padding at both ends of the clip


@dataclass(frozen=True)
class MelSpan:
    """A slice of the padded signal and, per video frame, its 16 mel-frame indices relative to the slice."""

    signal: np.ndarray  # (1, S) float32
    mel_index: np.ndarray  # (K, 16) int64


@dataclass(frozen=True)
class RenderRequest:
    """One chunk of frames to render, and the windows that drive them."""

    chunk: int
    frames: range
    audio: np.ndarray  # (K·640,) float32 samples of these frames
    windows: np.ndarray  # what drives the engine's renderer, one row per frame (its timeline makes them)


class Samples:
    """An append-only float32 buffer of samples, or of rows of ``width`` values, with amortised growth
    (a stream appends many small pieces).

    Indices are absolute (counted from the first value ever appended); :meth:`discard_before` lets go of the
    values no request can read any more, so a session of hours keeps only what its next frames need.
    """

    def __init__(self, initial: np.ndarray | None = None, width: int | None = None) -> None:
        self._row = () if width is None else (width,)
        self._minimum = (1 << 16) // (width or 1)  # 256 KiB: a few seconds of samples, or of rows
        capacity = max(self._minimum, 0 if initial is None else 2 * len(initial))
        self._data = np.zeros((capacity, *self._row), np.float32)
        self._base = 0  # absolute index of _data[0]
        self._start = 0  # absolute index of the first value kept
        self._size = 0  # absolute index after the last value
        if initial is not None:
            self.extend(initial)

    def extend(self, values: np.ndarray) -> None:
        count = len(values)
        if self._size + count - self._base > len(self._data):
            # Move what is kept to the front of a buffer sized for it (smaller again after a discard).
            kept = self._size - self._start
            grown = np.zeros((max(self._minimum, 2 * (kept + count)), *self._row), np.float32)
            grown[:kept] = self._data[self._start - self._base : self._size - self._base]
            self._data, self._base = grown, self._start
        self._data[self._size - self._base : self._size - self._base + count] = values
        self._size += count

    def truncate(self, size: int) -> None:
        self._size = max(self._start, min(self._size, size))

    def discard_before(self, index: int) -> None:
        """Values before absolute ``index`` will not be read again (their memory is reused at the next growth)."""
        self._start = max(self._start, min(index, self._size))

    def __len__(self) -> int:
        return self._size

    @property
    def start(self) -> int:
        """The first absolute index still kept."""
        return self._start

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def view(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A read-only view of absolute ``start … stop`` (copy it before the next append if it must outlive it)."""
        if start < self._start:
            raise IndexError(f"values before {self._start} were discarded; asked for {start}")
        stop = self._size if stop is None else min(stop, self._size)
        view = self._data[start - self._base : max(stop, start) - self._base]
        view.flags.writeable = False
        return view


class AudioTimeline:
    """The audio of one stream, its end, the mel spans that are final, and the render chunks' grid.

    At the end the clip has floor(samples / 640) frames. Some engines' front-ends crop the audio to those whole
    frames before their STFT (``crops_to_whole_frames``); the others' last mel frames read the rest too.
    """

    crops_to_whole_frames: ClassVar[bool] = True

    def __init__(self, chunk_frames: int = 8, first_chunk_frames: int | None = None) -> None:
        first = chunk_frames if first_chunk_frames is None else first_chunk_frames
        if chunk_frames < 1 or first < 1:
            raise ValueError(f"chunk sizes must be ≥ 1, got {chunk_frames} (first {first})")
        self.chunk_frames = chunk_frames
        self.first_chunk_frames = first
        self._samples = Samples()
        self._padded = Samples(np.zeros(PAD, np.float32))
        self._last_sample = 0.0
        self._final_frames: int | None = None
        self._next_chunk = 0
        # Conversation mode: the first frame not yet committed to the stream; what a rewind to it (or later)
        # needs is kept (see rewind). None: nothing is kept for rewinds (a clip).
        self._hold: int | None = None

    # ------------------------------------------------------------------------------------------- audio in

    def add_audio(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples in [-1, 1]."""
        if self._final_frames is not None:
            raise ValueError("audio arrived after the end of the stream")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return
        if not np.isfinite(samples).all():
            raise ValueError("the audio has non-finite samples")
        self._samples.extend(samples)
        self._padded.extend(preemphasis(samples, previous=self._last_sample).astype(np.float32))
        self._last_sample = float(samples[-1])

    def finish(self) -> None:
        """No more audio: the clip has floor(samples / 640) frames; the last frames may now be clamped."""
        if self._final_frames is None:
            self._final_frames = len(self._samples) // SAMPLES_PER_VIDEO_FRAME
            # The STFT's input ends with 400 zeros after the clip's last sample (cropped to whole frames or not).
            self._padded.truncate(PAD + self._clip_samples())
            self._padded.extend(np.zeros(PAD, np.float32))

    def _clip_samples(self) -> int:
        """Samples the STFT reads: all heard so far, or (cropping) those of whole frames."""
        if self.crops_to_whole_frames:
            frames = self._final_frames if self._final_frames is not None else self.frames_heard
            return frames * SAMPLES_PER_VIDEO_FRAME
        return len(self._samples)

    @property
    def finished(self) -> bool:
        return self._final_frames is not None

    @property
    def num_frames(self) -> int | None:
        return self._final_frames

    @property
    def frames_heard(self) -> int:
        return len(self._samples) // SAMPLES_PER_VIDEO_FRAME

    @property
    def samples_heard(self) -> int:
        return len(self._samples)

    def audio_of(self, frames: range) -> np.ndarray:
        return self._samples.view(frames.start * SAMPLES_PER_VIDEO_FRAME, frames.stop * SAMPLES_PER_VIDEO_FRAME).copy()

    def audio_tail(self) -> np.ndarray:
        """Samples after the last whole frame (fewer than 640), for the muxer's final fragment."""
        return self._samples.view((self._final_frames or 0) * SAMPLES_PER_VIDEO_FRAME).copy()

    # --------------------------------------------------------------------------------------- mel spans

    def mel_limit(self) -> int:
        """Index of the last mel frame that may be read: all of the clip at the end, else what is safe."""
        if self._final_frames is not None:
            return num_mel_frames(self._clip_samples()) - 1
        # Before the end, a mel frame is final when every sample it reads is (cropping: whole frames only).
        known = PAD + self._clip_samples()
        return (known - N_FFT) // HOP  # may be negative: nothing yet

    def span(self, index: np.ndarray) -> MelSpan | None:
        """The signal span that mel frames ``index`` (K, 16) read, or None while one of them may still change.

        After the end, indices past the clip are clamped to its last mel frame (and before 0 to the first).
        """
        limit = self.mel_limit()
        if self._final_frames is None and index.max() > limit:
            return None
        index = np.clip(index, 0, limit)
        low, high = int(index.min()), int(index.max())
        begin, end = signal_span_for_mel_frames(low, high - low + 1)
        signal = self._padded.view(begin, end)[None].copy()  # the buffer is reused as audio arrives
        return MelSpan(np.ascontiguousarray(signal, dtype=np.float32), (index - low).astype(np.int64))

    # ------------------------------------------------------------------------------------------ chunks

    @property
    def done(self) -> bool:
        return self._final_frames is not None and self._chunk_frames(self._next_chunk).start >= self._final_frames

    def _chunk_frames(self, chunk: int) -> range:
        """Frames of chunk ``chunk`` (before the end is known: the full chunk)."""
        first = 0 if chunk == 0 else self.first_chunk_frames + (chunk - 1) * self.chunk_frames
        stop = first + (self.first_chunk_frames if chunk == 0 else self.chunk_frames)
        return range(first, stop if self._final_frames is None else min(stop, self._final_frames))

    def _next_requests(self, make: Callable[[int, range], RenderRequest | None]) -> list[RenderRequest]:
        """The next chunks' requests, in order, as long as ``make(chunk, frames)`` can build one."""
        requests = []
        while True:
            frames = self._chunk_frames(self._next_chunk)
            if self._final_frames is not None and frames.start >= self._final_frames:
                break
            request = make(self._next_chunk, frames)
            if request is None:
                break
            requests.append(request)
            self._next_chunk += 1
        self._release()
        return requests

    # ------------------------------------------------------------------------------------------ rewinds

    def hold_from(self, frame: int) -> None:
        """Keep what a rewind to ``frame`` or later needs (conversation mode: the first frame not yet sent)."""
        self._hold = frame

    def rewind(self, frame: int) -> bool:
        """Forget the audio from frame ``frame`` on, and every request made for the frames from there, as if the
        audio had stopped at that frame; audio added next follows it. ``frame`` starts a chunk and is at least
        the last :meth:`hold_from`. False where this engine's timeline cannot rewind (nothing changes then)."""
        return False

    def _rewind_audio(self, frame: int) -> None:
        """The part of a rewind every engine shares: the samples, the padded signal and the chunk grid."""
        if self._final_frames is not None:
            raise ValueError("the stream has ended: nothing to rewind")
        if self._hold is None or frame < self._hold:
            raise ValueError(f"frame {frame} is before what this timeline keeps (from {self._hold})")
        first = self.first_chunk_frames
        if frame == 0:
            chunk = 0
        elif frame >= first and (frame - first) % self.chunk_frames == 0:
            chunk = 1 + (frame - first) // self.chunk_frames
        else:
            raise ValueError(f"frame {frame} does not start a chunk")
        start = frame * SAMPLES_PER_VIDEO_FRAME
        if start < len(self._samples):
            # Pre-emphasis continues from the sample before the cut (the padded signal holds its output).
            self._last_sample = float(self._samples.view(start - 1, start)[0]) if start > 0 else 0.0
            self._samples.truncate(start)
            self._padded.truncate(PAD + start)
        self._next_chunk = min(self._next_chunk, chunk)

    def _kept_frame(self) -> int:
        """The first frame whose audio is kept: the next to request, or the held one if earlier."""
        return self.next_frame if self._hold is None else min(self.next_frame, self._hold)

    # ------------------------------------------------------------------------------------------ memory

    @property
    def next_frame(self) -> int:
        """The first frame not yet in a render request (at most the clip's length)."""
        first = self._chunk_frames(self._next_chunk).start
        return first if self._final_frames is None else min(first, self._final_frames)

    def _first_mel_needed(self) -> int:
        """The lowest mel frame a span not yet made may read (each engine knows its windows)."""
        return 0

    def _release(self) -> None:
        """Let go of what no request still to be made can read: the samples before the next chunk (a chunk's
        audio, the tail), the padded signal before the lowest mel frame a later span reads. A conversation of
        hours keeps a few seconds."""
        # A held frame keeps the sample before it too: a rewind continues the pre-emphasis from it.
        self._samples.discard_before(max(0, self._kept_frame() * SAMPLES_PER_VIDEO_FRAME - 1))
        self._padded.discard_before(self._first_mel_needed() * HOP)

    @property
    def retained_bytes(self) -> int:
        """Memory held by the session's buffers (a bound on what a long session keeps; tests, diagnostics)."""
        return self._samples.nbytes + self._padded.nbytes
