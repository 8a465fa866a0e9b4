"""SadTalker's timeline:

- expression: blocks of ``motion_block`` frames on a fixed grid; a block is issued once the mel frames its
  windows read are all inside the audio received (no end clamping can apply to it later);
- pose (mode ``audio``): the 32-frame windows of :func:`lipsync.timeline.pose_windows`; the last, partial one
  after the end; a smoothed pose is final once 6 frames after it are known (or at the end);
- render: a frame needs the coefficients of the 13 frames after it.

A conversation (pose ``still``) can be rewound (an interrupt): the expression blocks whose windows read the
audio after the cut are computed again from the new audio, and every coefficient from them on with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.session.timeline import AudioTimeline, MelSpan, RenderRequest, Samples
from lipsync.audio import MEL_STEPS, mel_window_starts_of, num_mel_frames
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


@dataclass(frozen=True)
class MotionRequest:
    block: int
    frames: range
    span: MelSpan
    ref_exp: np.ndarray  # (K, 64)
    ratio: np.ndarray  # (K, 1)
    generation: int = 0  # the timeline's rewinds when it was made: an answer to an older one is ignored


# A frame's expression window reads up to 16 mel frames from int(80·(i − 2)/25), each 400 samples either side
# of its centre: ≈ 3.3 frames of audio after the frame. So a cut at frame F changes the expression of the frames
# from F − 4 on; this many frames back is a safe margin.
REWIND_LOOKBACK_FRAMES = 6


@dataclass(frozen=True)
class PoseRequest:
    window: PoseWindow
    span: MelSpan  # 32 frames
    z: np.ndarray  # (1, 64)


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
        self._raw_poses = Samples(self.source[None, EXP_DIM : EXP_DIM + 6], width=6)  # frame 0 = the source
        self._next_pose_window = 0
        self._rows = Samples(width=self.source.size)  # final per-frame semantics
        self._generation = 0  # rewinds so far

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
            requests.append(MotionRequest(block, frames, span, ref_exp, ratio[:, None], self._generation))
            self._next_motion_block += 1
        return requests

    def set_exp(self, request: MotionRequest, exp: np.ndarray) -> None:
        if request.generation != self._generation:
            return  # made before a rewind: its audio was cut
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

    # ------------------------------------------------------------------------------------------ rewinds

    def rewind(self, frame: int) -> bool:
        """Pose ``still`` (every conversation): the expression is computed again from the first block whose
        windows read audio from ``frame`` on, and the coefficients with it; answers to older requests are
        ignored. Pose ``audio`` cannot be rewound (its windows and smoothing span 32 frames)."""
        if self.pose_mode != "still":
            return False
        self._rewind_audio(frame)
        first = self._rewound_from(frame)
        self._next_motion_block = min(self._next_motion_block, first // self.motion_block)
        self._exp = {f: exp for f, exp in self._exp.items() if f < first}
        self._exp_count = min(self._exp_count, first)
        self._rows.truncate(first)
        self._generation += 1
        return True

    def hold_from(self, frame: int) -> None:
        super().hold_from(frame)
        if self.pose_mode == "still":
            self._blinks.keep_from(self._rewound_from(frame))  # a rewind asks for these frames' blinks again

    def _rewound_from(self, frame: int) -> int:
        """The first frame of the first expression block a rewind to ``frame`` computes again."""
        return max(0, frame - REWIND_LOOKBACK_FRAMES) // self.motion_block * self.motion_block

    def _first_mel_needed(self) -> int:
        # The next expression block, and in pose mode `audio` the next pose window: a grid window, or the last
        # one, which starts 32 frames before the end (at least 32 before the frames heard so far). With a held
        # frame, the block a rewind to it would compute again.
        first = self._next_motion_block * self.motion_block
        if self._hold is not None and self.pose_mode == "still":
            first = min(first, self._rewound_from(self._hold))
        if self.pose_mode == "audio":
            pose_first = 1 + self._next_pose_request * POSE_WINDOW
            first = min(first, pose_first, max(1, self.frames_heard - POSE_WINDOW))
        start = int(mel_window_starts_of(np.array([first]))[0])
        # Indices are clamped to the clip: never above its last mel frame (at least the one heard so far).
        return max(0, min(start, num_mel_frames(self._clip_samples()) - 1))

    def _release(self) -> None:
        super()._release()
        # A frame's mapping window reads 13 frames back; smoothing a pose reads 6 raw poses back, or the
        # clip's last 13 at its end. A held frame keeps what a rewind to it reads and computes again.
        first_row = self.next_frame
        if self._hold is not None and self.pose_mode == "still":
            first_row = min(first_row, self._rewound_from(self._hold))
        self._rows.discard_before(first_row - MAPPING_RADIUS)
        self._raw_poses.discard_before(min(len(self._rows) - SMOOTH_WINDOW // 2, len(self._raw_poses) - SMOOTH_WINDOW))

    @property
    def retained_bytes(self) -> int:
        return super().retained_bytes + self._rows.nbytes + self._raw_poses.nbytes
