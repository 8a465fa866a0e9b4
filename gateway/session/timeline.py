"""The streaming timelines: what can be computed now, for a session whose audio keeps arriving.

Pure and synchronous: the session feeds audio in, asks for the next requests, runs them on Triton and hands
the results back. Every request is a function of fixed-grid positions and, at the end only, of the clip's
length — never of when audio arrived or of the chunk size — so a stream renders exactly the frames of a
whole-clip run (``export.reference``).

:class:`AudioTimeline` is what both engines share: the audio received, the end, the mel spans that can no
longer change, and the render chunks (the first may be shorter: see ``first_chunk_frames``).

:class:`SadTalkerTimeline`:

- expression: blocks of ``motion_block`` frames on a fixed grid; a block is issued once the mel frames its
  windows read are all inside the audio received (no end clamping can apply to it later);
- pose (mode ``audio``): the 32-frame windows of :func:`lipsync.timeline.pose_windows`; the last, partial one
  after the end; a smoothed pose is final once 6 frames after it are known (or at the end);
- render: a frame needs the coefficients of the 13 frames after it.

:class:`Wav2LipTimeline`: a frame needs only its own 16 mel frames from ``int(80·i/25)``; near the end they are
moved back to end on the clip's last mel frame (:mod:`lipsync.wav2lip`), so the last frames wait for the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from lipsync.audio import (
    FPS,
    HOP,
    MEL_FRAMES_PER_SECOND,
    MEL_STEPS,
    N_FFT,
    NUM_MELS,
    SAMPLES_PER_VIDEO_FRAME,
    mel_window_starts_of,
    num_mel_frames,
    preemphasis,
    signal_span_for_mel_frames,
)
from lipsync.timeline import (
    EXP_DIM,
    MAPPING_RADIUS,
    POSE_WINDOW,
    SMOOTH_WINDOW,
    BlinkSchedule,
    PoseWindow,
    mapping_windows,
    pose_latent,
    pose_windows,
    smooth_pose,
)
from lipsync.wav2lip import wav2lip_mel_window_indices

PAD = N_FFT // 2  # the centred STFT's zero padding at both ends of the clip


@dataclass(frozen=True)
class MelSpan:
    """A slice of the padded signal and, per video frame, its 16 mel-frame indices relative to the slice."""

    signal: np.ndarray  # (1, S) float32
    mel_index: np.ndarray  # (K, 16) int64


@dataclass(frozen=True)
class MotionRequest:
    block: int
    frames: range
    span: MelSpan
    ref_exp: np.ndarray  # (K, 64)
    ratio: np.ndarray  # (K, 1)


@dataclass(frozen=True)
class PoseRequest:
    window: PoseWindow
    span: MelSpan  # 32 frames
    z: np.ndarray  # (1, 64)


@dataclass(frozen=True)
class RenderRequest:
    """One chunk of frames to render, and the windows that drive them."""

    chunk: int
    frames: range
    audio: np.ndarray  # (K·640,) float32 samples of these frames
    windows: np.ndarray  # SadTalker: (K, C, 27) mapping windows; Wav2Lip: (K, 1, 80, 16) mel windows


class _Samples:
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

    At the end the clip has floor(samples / 640) frames. SadTalker's front-end crops the audio to those whole
    frames before its STFT; Wav2Lip's does not (``crops_to_whole_frames``): its last mel frames read the rest.
    """

    crops_to_whole_frames: ClassVar[bool] = True

    def __init__(self, chunk_frames: int = 8, first_chunk_frames: int | None = None) -> None:
        first = chunk_frames if first_chunk_frames is None else first_chunk_frames
        if chunk_frames < 1 or first < 1:
            raise ValueError(f"chunk sizes must be ≥ 1, got {chunk_frames} (first {first})")
        self.chunk_frames = chunk_frames
        self.first_chunk_frames = first
        self._samples = _Samples()
        self._padded = _Samples(np.zeros(PAD, np.float32))
        self._last_sample = 0.0
        self._final_frames: int | None = None
        self._next_chunk = 0

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
        self._samples.discard_before(self.next_frame * SAMPLES_PER_VIDEO_FRAME)
        self._padded.discard_before(self._first_mel_needed() * HOP)

    @property
    def retained_bytes(self) -> int:
        """Memory held by the session's buffers (a bound on what a long session keeps; tests, diagnostics)."""
        return self._samples.nbytes + self._padded.nbytes


@dataclass(frozen=True)
class MelRequest:
    """The mel windows of a block of frames, computed from one signal span (the span's length is fixed by the
    block grid, so a frame's window never depends on how the stream was chunked)."""

    block: int
    frames: range
    span: MelSpan


class Wav2LipTimeline(AudioTimeline):
    """Wav2Lip: each frame's 16 mel frames from ``int(80·i/25)``, moved back at the end to end on the last.

    Mel windows are computed in blocks of ``mel_block`` frames on a fixed grid (as SadTalker's expression);
    a chunk is rendered once all its frames have their windows. Upstream's mel covers all of the audio.
    """

    crops_to_whole_frames = False

    def __init__(self, chunk_frames: int = 8, mel_block: int = 4, first_chunk_frames: int | None = None) -> None:
        super().__init__(chunk_frames, first_chunk_frames)
        if mel_block < 1:
            raise ValueError(f"mel_block must be ≥ 1, got {mel_block}")
        self.mel_block = mel_block
        self._windows = _Samples(width=NUM_MELS * MEL_STEPS)  # frame → its (80, 16) window, flattened
        self._pending: dict[int, np.ndarray] = {}  # block → its windows, until the blocks before it are in
        self._next_block = 0  # the next block to ask for
        self._next_window_block = 0  # the next block whose windows are appended

    def mel_requests(self) -> list[MelRequest]:
        """Blocks whose mel windows can no longer change and have not been asked for yet."""
        total = self._final_frames if self._final_frames is not None else self.frames_heard
        requests = []
        while self._next_block * self.mel_block < total:
            first = self._next_block * self.mel_block
            frames = range(first, min(first + self.mel_block, total))
            if len(frames) < self.mel_block and self._final_frames is None:
                break
            span = self.span(self._indices(frames))
            if span is None:
                break
            requests.append(MelRequest(self._next_block, frames, span))
            self._next_block += 1
        return requests

    def set_mel(self, request: MelRequest, mel: np.ndarray) -> None:
        """The ``mel`` model's answer (T, 80) for the request's span."""
        windows = mel[request.span.mel_index].transpose(0, 2, 1)  # (K, 80, 16)
        self._pending[request.block] = windows.reshape(len(request.frames), -1)
        while self._next_window_block in self._pending:
            self._windows.extend(self._pending.pop(self._next_window_block))
            self._next_window_block += 1

    def render_requests(self) -> list[RenderRequest]:
        """Chunks whose every frame has its mel window."""
        known = len(self._windows)

        def make(chunk: int, frames: range) -> RenderRequest | None:
            if frames.stop > known or len(frames) == 0:
                return None
            windows = self._windows.view(frames.start, frames.stop).reshape(-1, 1, NUM_MELS, MEL_STEPS).copy()
            return RenderRequest(chunk, frames, self.audio_of(frames), windows=windows)

        return self._next_requests(make)

    def _first_mel_needed(self) -> int:
        # Later blocks read from int(80·f/25) of their first frame f on, or (moved back at the end) from
        # T − 16, where T (the clip's mel frames) is at least what the audio heard so far makes.
        first = self._next_block * self.mel_block
        mel_frames = max(num_mel_frames(self._clip_samples()), MEL_STEPS)
        return max(0, min(MEL_FRAMES_PER_SECOND * first // FPS, mel_frames - MEL_STEPS))

    def _release(self) -> None:
        super()._release()
        self._windows.discard_before(self.next_frame)

    @property
    def retained_bytes(self) -> int:
        pending = sum(int(windows.nbytes) for windows in self._pending.values())
        return super().retained_bytes + self._windows.nbytes + pending

    def _indices(self, frames: range) -> np.ndarray:
        total = self._final_frames
        if total is None:  # before the end no window is moved back: it lies inside the audio heard
            starts = MEL_FRAMES_PER_SECOND * np.arange(frames.start, frames.stop, dtype=np.int64) // FPS
            return starts[:, None] + np.arange(MEL_STEPS)[None, :]
        # Clips under 16 mel frames (0.19 s; upstream refuses them) read their last mel frame repeated.
        mel_frames = max(num_mel_frames(self._clip_samples()), MEL_STEPS)
        return wav2lip_mel_window_indices(frames.stop, mel_frames)[frames.start :]


class SadTalkerTimeline(AudioTimeline):
    """SadTalker: expression blocks, pose windows, and the 27-frame mapping windows of each chunk."""

    def __init__(
        self,
        source: np.ndarray,
        pose_mode: Literal["still", "audio"] = "still",
        expression_scale: float = 1.0,
        blink: bool = True,
        seed: int = 0,
        chunk_frames: int = 8,
        motion_block: int = 8,
        first_chunk_frames: int | None = None,
    ) -> None:
        super().__init__(chunk_frames, first_chunk_frames)
        if motion_block < 1:
            raise ValueError(f"motion_block must be ≥ 1, got {motion_block}")
        self.source = source  # the portrait's semantics (70,) or (73,)
        self.pose_mode = pose_mode
        self.expression_scale = expression_scale
        self.blink = blink
        self.seed = seed
        self.motion_block = motion_block
        self._exp: dict[int, np.ndarray] = {}
        self._motion: dict[int, tuple[PoseWindow, np.ndarray]] = {}  # number → (32, 6)
        # Blocks and pose windows are issued in order, so a counter says which were (no set that grows).
        self._next_motion_block = 0
        self._next_pose_request = 0
        self._blinks = BlinkSchedule(seed)
        # Coefficients are finalised once, in frame order, so a wake-up costs what is new, not the session so far.
        self._exp_count = 0  # frames 0.._exp_count−1 have their expression
        self._raw_poses = _Samples(self.source[None, EXP_DIM : EXP_DIM + 6], width=6)  # frame 0 = the source
        self._next_pose_window = 0
        self._rows = _Samples(width=self.source.size)  # final per-frame semantics

    def _window_span(self, frames: np.ndarray) -> MelSpan | None:
        """The mel span of these frames' SadTalker windows (each index clamped to the clip)."""
        starts = mel_window_starts_of(frames)
        return self.span(starts[:, None] + np.arange(MEL_STEPS)[None, :])

    # ------------------------------------------------------------------------------------------ requests

    def motion_requests(self) -> list[MotionRequest]:
        """Expression blocks that can be computed now and have not been asked for yet."""
        total = self._final_frames if self._final_frames is not None else self.frames_heard
        requests = []
        while self._next_motion_block * self.motion_block < total:
            block = self._next_motion_block
            frames = range(block * self.motion_block, min((block + 1) * self.motion_block, total))
            if len(frames) < self.motion_block and self._final_frames is None:
                break
            span = self._window_span(np.arange(frames.start, frames.stop))
            if span is None:
                break
            ratio = self._blinks.ratios(frames.start, len(frames)) if self.blink else np.zeros(len(frames), np.float32)
            ref_exp = np.repeat(self.source[None, :EXP_DIM], len(frames), axis=0).astype(np.float32)
            requests.append(MotionRequest(block, frames, span, ref_exp, ratio[:, None]))
            self._next_motion_block += 1
        return requests

    def set_exp(self, request: MotionRequest, exp: np.ndarray) -> None:
        if exp.shape != (len(request.frames), EXP_DIM):
            raise ValueError(f"motion answered shape {exp.shape} for {len(request.frames)} frames")
        for row, frame in enumerate(request.frames):
            self._exp[frame] = exp[row]
        while self._exp_count in self._exp:
            self._exp_count += 1

    def pose_requests(self) -> list[PoseRequest]:
        if self.pose_mode != "audio":
            return []
        # Before the end, the windows of a clip of the frames heard so far: all but a trailing partial one are
        # the final clip's windows too (the grid is fixed; only the last window depends on the length).
        total = self._final_frames if self._final_frames is not None else self.frames_heard
        if total < 1:
            return []
        requests = []
        for window in pose_windows(total, first=self._next_pose_request):
            is_full_grid_window = window.start == 1 + window.number * POSE_WINDOW and len(window.keep) == POSE_WINDOW
            if self._final_frames is None and not is_full_grid_window:
                break
            last = (self._final_frames or total) - 1
            frames = np.minimum(np.arange(window.start, window.start + POSE_WINDOW), last)
            span = self._window_span(frames)
            if span is None:
                break
            requests.append(PoseRequest(window, span, pose_latent(self.seed, window.number)[None]))
            self._next_pose_request = window.number + 1
        return requests

    def set_pose_motion(self, request: PoseRequest, motion: np.ndarray) -> None:
        if motion.shape != (POSE_WINDOW, 6):
            raise ValueError(f"audio2pose answered shape {motion.shape}, expected ({POSE_WINDOW}, 6)")
        self._motion[request.window.number] = (request.window, motion)

    # -------------------------------------------------------------------------------------- coefficients

    def _final_pose_count(self) -> int:
        """Append the raw poses of the windows answered in order; how many leading smoothed poses are final."""
        ref_pose = self.source[EXP_DIM : EXP_DIM + 6]
        while self._next_pose_window in self._motion:
            window, motion = self._motion.pop(self._next_pose_window)
            keep = np.arange(window.keep.start, window.keep.stop)
            self._raw_poses.extend(ref_pose[None] + motion[keep - window.start])
            self._next_pose_window += 1
        known = len(self._raw_poses)
        if self._final_frames is not None and known == self._final_frames:
            return known
        # A smoothed pose is final once the 6 frames after it are known (see lipsync.timeline.smooth_pose).
        return known - SMOOTH_WINDOW // 2 if known >= SMOOTH_WINDOW else 0

    def _smoothed_poses(self, first: int, stop: int) -> np.ndarray:
        """Final smoothed poses of frames first..stop−1, from the fewest raw poses that decide them.

        Savitzky–Golay reads t − 6 … t + 6 inside the clip and fits the first or last 13 frames at its ends, so
        a slice from ``first − 6`` (or from the clip's start, or reaching back 13 from the end) is enough.
        """
        known = len(self._raw_poses)
        start = max(0, min(first - SMOOTH_WINDOW // 2, known - SMOOTH_WINDOW))
        return smooth_pose(np.array(self._raw_poses.view(start, known)))[first - start : stop - start]

    def _finalise(self) -> int:
        """Append the semantics of every frame that became final since the last call; return how many are."""
        done = len(self._rows)
        final = self._exp_count
        if self.pose_mode == "audio":
            final = min(final, self._final_pose_count())
        if final <= done:
            return done
        exp = np.stack([self._exp.pop(f) for f in range(done, final)]) * np.float32(self.expression_scale)
        if self.pose_mode == "audio":
            poses = self._smoothed_poses(done, final)
        else:
            poses = np.repeat(self.source[None, EXP_DIM : EXP_DIM + 6], final - done, axis=0)
        columns = [exp, poses]
        if self.source.size > EXP_DIM + 6:
            columns.append(np.repeat(self.source[None, EXP_DIM + 6 :], final - done, axis=0))
        self._rows.extend(np.concatenate(columns, axis=1))
        return final

    def render_requests(self) -> list[RenderRequest]:
        """Chunks whose every frame has its whole (clamped) mapping window final."""
        final = self._finalise()
        first_row = self._rows.start
        semantics = self._rows.view(first_row, final)
        total = self._final_frames

        def make(chunk: int, frames: range) -> RenderRequest | None:
            needed = frames.stop - 1 + MAPPING_RADIUS
            if (needed if total is None else min(needed, total - 1)) >= final:
                return None
            # Before the end no window reaches past `final`, so clamping to it changes nothing.
            clip = final if total is None else total
            windows = mapping_windows(semantics, np.arange(frames.start, frames.stop), clip, first_row)
            return RenderRequest(chunk, frames, self.audio_of(frames), windows=windows)

        return self._next_requests(make)

    def _first_mel_needed(self) -> int:
        # The next expression block, and in pose mode `audio` the next pose window: a grid window, or the last
        # one, which starts 32 frames before the end (at least 32 before the frames heard so far).
        first = self._next_motion_block * self.motion_block
        if self.pose_mode == "audio":
            pose_first = 1 + self._next_pose_request * POSE_WINDOW
            first = min(first, pose_first, max(1, self.frames_heard - POSE_WINDOW))
        start = int(mel_window_starts_of(np.array([first]))[0])
        # Indices are clamped to the clip: never above its last mel frame (at least the one heard so far).
        return max(0, min(start, num_mel_frames(self._clip_samples()) - 1))

    def _release(self) -> None:
        super()._release()
        # A frame's mapping window reads 13 frames back; smoothing a pose reads 6 raw poses back, or the
        # clip's last 13 at its end.
        self._rows.discard_before(self.next_frame - MAPPING_RADIUS)
        self._raw_poses.discard_before(min(len(self._rows) - SMOOTH_WINDOW // 2, len(self._raw_poses) - SMOOTH_WINDOW))

    @property
    def retained_bytes(self) -> int:
        return super().retained_bytes + self._rows.nbytes + self._raw_poses.nbytes
