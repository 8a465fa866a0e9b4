"""Per-frame coefficient semantics: the source coefficients, the blink schedule, the pose windows, the
Savitzky–Golay smoothing and the 27-frame mapping windows.

Upstream (OpenTalker/SadTalker ``src/generate_batch.py``, ``src/test_audio2coeff.py``,
``src/audio2pose_models/audio2pose.py``, ``src/generate_facerender_batch.py``) computes all of these from the
whole clip. A stream does not know the clip's length, so where upstream's choice depends on it we define a
schedule that does not, and say so:

- Blinks: upstream draws gaps from a range that depends on the clip length; here gaps are uniform in
  [10, 70) frames from a generator seeded per session, so the schedule of the first frames never changes
  as more audio arrives (a blink cut by the end of the clip is cut, not dropped).
- Pose windows (pose mode ``audio``): as upstream, frame 0 is the source pose; 32-frame windows start at
  frames 1, 33, 65, …; if frames remain, one last window covers the last 32 frames and only its new frames
  are kept. Each window has its own latent z, drawn from (seed, window number). Upstream fails on clips
  shorter than 33 frames; here that window starts at frame 1 and its mel windows past the end repeat the last.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.signal import savgol_filter

# Layout of face_recon's 257 coefficients and of the per-frame semantic vector the mapping net reads.
RECON_EXP = slice(80, 144)
RECON_ANGLE = slice(224, 227)
RECON_TRANS = slice(254, 257)
EXP_DIM = 64
POSE_DIM = 6  # angles 3 + translation 3
SEMANTIC_DIM = {"crop": 70, "resize": 70, "full": 73}  # `full` adds the crop scale and offset (3)

MAPPING_RADIUS = 13  # a frame's mapping window is frames i−13 … i+13, clamped to the clip
POSE_WINDOW = 32
POSE_LATENT_DIM = 64
NUM_POSE_STYLES = 46
SMOOTH_WINDOW = 13
SMOOTH_ORDER = 2

BLINK_SHAPE = np.array([0.5, 0.9, 1.0, 0.9, 0.5], dtype=np.float32)
BLINK_GAP = (10, 70)  # frames before each blink, uniform in [10, 70)


def source_semantics(coeffs: np.ndarray, crop_params: np.ndarray | None = None) -> np.ndarray:
    """The portrait's semantic vector: exp 64 | angles 3 | translation 3 (| crop scale, tx, ty for ``full``).

    ``coeffs`` is face_recon's (257,) output; ``crop_params`` the (s, tx, ty) of the 224² alignment.
    """
    coeffs = np.asarray(coeffs, dtype=np.float32)
    if coeffs.shape != (257,):
        raise ValueError(f"coeffs must be face_recon's (257,) output, got shape {coeffs.shape}")
    parts = [coeffs[RECON_EXP], coeffs[RECON_ANGLE], coeffs[RECON_TRANS]]
    if crop_params is not None:
        crop = np.asarray(crop_params, dtype=np.float32)
        if crop.shape != (3,):
            raise ValueError(f"crop_params must be (scale, tx, ty), got shape {crop.shape}")
        parts.append(crop)
    return np.concatenate(parts)


def mapping_window_indices(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """(K, 27) frame indices of each frame's mapping window, each clamped to ``[0, num_frames − 1]``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    offsets = np.arange(-MAPPING_RADIUS, MAPPING_RADIUS + 1)
    return np.clip(np.asarray(frames)[:, None] + offsets[None, :], 0, num_frames - 1)


def mapping_windows(semantics: np.ndarray, frames: np.ndarray, num_frames: int, first_row: int = 0) -> np.ndarray:
    """(K, C, 27) windows for ``frames`` from per-frame semantics (T, C) whose row 0 is frame ``first_row``
    (a stream keeps only the rows its next windows read)."""
    indices = mapping_window_indices(frames, num_frames) - first_row
    if indices.size and indices.min() < 0:
        raise ValueError(f"the windows read frames before {first_row}, the first row given")
    return np.ascontiguousarray(semantics[indices].transpose(0, 2, 1))


def source_window(semantic: np.ndarray) -> np.ndarray:
    """(1, C, 27): the source frame repeated, whose mapping gives the source keypoints."""
    return np.repeat(np.asarray(semantic, dtype=np.float32)[None, :, None], 2 * MAPPING_RADIUS + 1, axis=2)


def blink_ratios(first: int, count: int, seed: int) -> np.ndarray:
    """Eye-blink ratios of frames ``first … first+count−1``: the same values whatever the clip's length."""
    return BlinkSchedule(seed).ratios(first, count)


class BlinkSchedule:
    """:func:`blink_ratios` for a stream that asks for its frames in order: the generator is kept where it got
    to, so asking for frame ``n`` costs what is new, not ``n`` draws (a conversation runs for hours)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._frame = 0  # the frame after the last blink drawn: the next gap counts from here
        self._starts: deque[int] = deque()  # drawn blinks that may still touch a frame asked for
        self._first = 0  # frames before this were asked for and are let go
        self._kept: int | None = None  # frames from here may be asked for again (a timeline that can rewind)

    def keep_from(self, frame: int) -> None:
        """Frames from ``frame`` on may be asked for again (an interrupt rewinds to a frame at or after it)."""
        self._kept = frame

    def ratios(self, first: int, count: int) -> np.ndarray:
        if first < self._first or count < 0:
            raise ValueError(f"need first ≥ {self._first} (frames are asked for in order) and count ≥ 0")
        self._first = first if self._kept is None else min(first, max(self._first, self._kept))
        end = first + count
        while self._frame < end:
            start = self._frame + int(self._rng.integers(*BLINK_GAP))
            self._starts.append(start)
            self._frame = start + len(BLINK_SHAPE)
        while self._starts and self._starts[0] + len(BLINK_SHAPE) <= self._first:
            self._starts.popleft()
        ratios = np.zeros(count, dtype=np.float32)
        for start in self._starts:
            for k, value in enumerate(BLINK_SHAPE):
                if first <= start + k < end:
                    ratios[start + k - first] = value
        return ratios


@dataclass(frozen=True)
class PoseWindow:
    """One audio2pose call: mel windows of frames ``start … start+31``; outputs kept for ``keep``."""

    number: int  # seeds this window's latent z
    start: int
    keep: range


def pose_windows(num_frames: int, first: int = 0) -> list[PoseWindow]:
    """The audio2pose windows of a clip of ``num_frames`` frames (frame 0 is the source pose itself), from
    window number ``first`` on."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    moving = num_frames - 1
    full, rest = divmod(moving, POSE_WINDOW)
    windows = [
        PoseWindow(i, 1 + i * POSE_WINDOW, range(1 + i * POSE_WINDOW, 1 + (i + 1) * POSE_WINDOW))
        for i in range(max(first, 0), full)
    ]
    if rest and full >= first:
        windows.append(PoseWindow(full, max(1, num_frames - POSE_WINDOW), range(num_frames - rest, num_frames)))
    return windows


def pose_latent(seed: int, window: int) -> np.ndarray:
    """The latent z (64,) of pose window ``window``: a function of (seed, window) only."""
    return np.random.default_rng([seed, window]).standard_normal(POSE_LATENT_DIM).astype(np.float32)


def smooth_pose(poses: np.ndarray) -> np.ndarray:
    """Savitzky–Golay smoothing over time (axis −2 of ``(…, T, 6)``), window 13, order 2, scipy's default mode.

    As upstream, a clip shorter than 13 frames uses the largest odd window ≤ T; upstream fails for T < 3,
    where the poses are returned unchanged. Streaming: on a prefix of length L ≥ 13, frames t ≤ L − 7 are
    already final (the interior filter reads t − 6 … t + 6; the first 6 frames fit the first 13).
    """
    if not isinstance(poses, np.ndarray) or poses.ndim < 2:
        raise ValueError(f"poses must be (..., T, 6), got {getattr(poses, 'shape', type(poses).__name__)}")
    if not np.isfinite(poses).all():
        raise ValueError("poses has non-finite values")
    length = poses.shape[-2]
    window = SMOOTH_WINDOW if length >= SMOOTH_WINDOW else (length - 1) // 2 * 2 + 1
    if window <= SMOOTH_ORDER:
        return poses.copy()
    return np.asarray(savgol_filter(poses, window, SMOOTH_ORDER, axis=-2), dtype=poses.dtype)
