"""Wav2Lip's timeline: a frame needs only its own 16 mel frames from ``int(80·i/25)``; near the end they are
moved back to end on the clip's last mel frame (:mod:`lipsync.wav2lip`), so the last frames wait for the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.session.timeline import AudioTimeline, MelSpan, RenderRequest, Samples
from lipsync.audio import FPS, MEL_FRAMES_PER_SECOND, MEL_STEPS, NUM_MELS, SAMPLES_PER_VIDEO_FRAME, num_mel_frames
from lipsync.wav2lip import wav2lip_mel_window_indices


@dataclass(frozen=True)
class MelRequest:
    """The mel windows of a block of frames, computed from one signal span (the span's length is fixed by the
    block grid, so a frame's window never depends on how the stream was chunked)."""

    block: int
    frames: range
    span: MelSpan
    generation: int = 0  # the timeline's rewinds before it was made: an answer to an older one is stale


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
        self._windows = Samples(width=NUM_MELS * MEL_STEPS)  # frame → its (80, 16) window, flattened
        self._pending: dict[int, np.ndarray] = {}  # block → its windows, until the blocks before it are in
        self._next_block = 0  # the next block to ask for
        self._next_window_block = 0  # the next block whose windows are appended
        self._generation = 0  # rewinds so far

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
            requests.append(MelRequest(self._next_block, frames, span, self._generation))
            self._next_block += 1
        return requests

    def set_mel(self, request: MelRequest, mel: np.ndarray) -> None:
        """The ``mel`` model's answer (T, 80) for the request's span (ignored if a rewind made it stale)."""
        if request.generation != self._generation:
            return
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

    def rewind(self, frame: int) -> bool:
        """Mel windows are made again from the block holding ``frame`` (the frames before it in that block read
        audio past it); answers to the requests made before are ignored."""
        self._rewind_audio(frame)
        block = frame // self.mel_block
        # Every frame before `frame` was rendered, so every block before `block` has its windows.
        self._next_block = self._next_window_block = block
        self._windows.truncate(block * self.mel_block)
        self._pending.clear()
        self._generation += 1
        return True

    def _held_block_start(self) -> int | None:
        """The first frame of the held frame's block (its windows may be made again), if a frame is held."""
        return None if self._hold is None else self._hold // self.mel_block * self.mel_block

    def _first_mel_needed(self) -> int:
        # Later blocks read from int(80·f/25) of their first frame f on, or (moved back at the end) from
        # T − 16, where T (the clip's mel frames) is at least what the audio heard so far makes. With a held
        # frame, its block may be made again (rewind), and the clip may end soon after it: T is then at least
        # what the audio up to the held frame makes.
        first = self._next_block * self.mel_block
        samples = self._clip_samples()
        if self._hold is not None:
            first = min(first, self._hold // self.mel_block * self.mel_block)
            samples = min(samples, self._hold * SAMPLES_PER_VIDEO_FRAME)
        mel_frames = max(num_mel_frames(samples), MEL_STEPS)
        return max(0, min(MEL_FRAMES_PER_SECOND * first // FPS, mel_frames - MEL_STEPS))

    def _release(self) -> None:
        super()._release()
        held = self._held_block_start()
        self._windows.discard_before(self.next_frame if held is None else min(self.next_frame, held))

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
