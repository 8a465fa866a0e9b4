"""Per-frame semantics shared by the offline pipeline and the stream (lipsync.timeline)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import savgol_filter

from lipsync.timeline import (
    BLINK_SHAPE,
    POSE_WINDOW,
    BlinkSchedule,
    blink_ratios,
    mapping_window_indices,
    mapping_windows,
    pose_latent,
    pose_windows,
    smooth_pose,
    source_semantics,
    source_window,
)


def test_smooth_pose_is_upstreams_savgol() -> None:
    rng = np.random.default_rng(0)
    poses = rng.standard_normal((1, 40, 6)).astype(np.float32)
    np.testing.assert_allclose(smooth_pose(poses), savgol_filter(poses, 13, 2, axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(smooth_pose(poses[0]), smooth_pose(poses)[0], rtol=1e-6, atol=1e-6)
    # Order-2 fitting keeps a quadratic trajectory exactly, edges included (mode "interp").
    t = np.arange(40, dtype=np.float64)[:, None]
    quadratic = 0.01 * t**2 - 0.3 * t + np.arange(6)
    np.testing.assert_allclose(smooth_pose(quadratic), quadratic, atol=1e-9)
    assert smooth_pose(poses).std() < poses.std()  # noise is smoothed
    # Short clips: upstream uses the largest odd window ≤ T; T < 3 is returned unchanged (upstream fails).
    np.testing.assert_allclose(smooth_pose(poses[:, :8]), savgol_filter(poses[:, :8], 7, 2, axis=1), atol=1e-6)
    np.testing.assert_array_equal(smooth_pose(poses[:, :2]), poses[:, :2])
    with pytest.raises(ValueError, match="non-finite"):
        smooth_pose(np.full((20, 6), np.nan))


@pytest.mark.parametrize("known", [13, 20, 33, 59])
def test_smoothing_a_prefix_finalises_all_but_its_last_six_frames(known: int) -> None:
    poses = np.random.default_rng(1).standard_normal((60, 6))
    whole = smooth_pose(poses)
    prefix = smooth_pose(poses[:known])
    np.testing.assert_allclose(prefix[: known - 6], whole[: known - 6], atol=1e-12)


def test_blinks_do_not_depend_on_the_clip_length() -> None:
    whole = blink_ratios(0, 2000, seed=7)
    for first, count in [(0, 1), (0, 37), (100, 250), (1234, 9), (1990, 10)]:
        np.testing.assert_array_equal(blink_ratios(first, count, seed=7), whole[first : first + count])
    assert not np.array_equal(whole, blink_ratios(0, 2000, seed=8))


def test_blinks_have_upstreams_shape_and_spacing() -> None:
    ratios = blink_ratios(0, 3000, seed=3)
    starts = np.flatnonzero((ratios == BLINK_SHAPE[0]) & (np.roll(ratios, -1) == BLINK_SHAPE[1]))
    assert len(starts) > 3000 / (70 + 5)  # at least one blink per the longest gap
    for start in starts[:-1]:
        np.testing.assert_array_equal(ratios[start : start + 5], BLINK_SHAPE)
    gaps = np.diff(starts) - len(BLINK_SHAPE)
    assert gaps.min() >= 10 and gaps.max() < 70
    assert float(ratios.min()) == 0.0


@pytest.mark.parametrize("num_frames", [1, 2, 20, 33, 34, 64, 65, 100, 257])
def test_pose_windows_cover_every_moving_frame_once(num_frames: int) -> None:
    windows = pose_windows(num_frames)
    kept = [frame for w in windows for frame in w.keep]
    assert kept == list(range(1, num_frames))
    for number, window in enumerate(windows):
        assert window.number == number
        assert window.start >= 1
        assert all(window.start <= f < window.start + POSE_WINDOW for f in window.keep)


def test_pose_windows_follow_upstream_for_long_clips() -> None:
    # Upstream (audio2pose.test): windows of 32 from frame 1, then the last 32 frames keeping the remainder.
    windows = pose_windows(100)
    assert [(w.start, w.keep.start, w.keep.stop) for w in windows] == [
        (1, 1, 33),
        (33, 33, 65),
        (65, 65, 97),
        (68, 97, 100),
    ]


def test_pose_latents_depend_only_on_seed_and_window() -> None:
    np.testing.assert_array_equal(pose_latent(5, 2), pose_latent(5, 2))
    assert not np.array_equal(pose_latent(5, 2), pose_latent(5, 3))
    assert not np.array_equal(pose_latent(5, 2), pose_latent(6, 2))
    assert pose_latent(5, 0).shape == (64,) and pose_latent(5, 0).dtype == np.float32


def test_mapping_windows_clamp_like_upstream() -> None:
    num_frames = 30
    semantics = np.arange(num_frames * 70, dtype=np.float32).reshape(num_frames, 70)
    frames = np.array([0, 5, 13, 29])
    windows = mapping_windows(semantics, frames, num_frames)
    assert windows.shape == (4, 70, 27)
    for row, frame in enumerate(frames):
        # upstream transform_semantic_target: indices frame−13 … frame+13, each clamped to the clip
        expected = [min(max(i, 0), num_frames - 1) for i in range(frame - 13, frame + 14)]
        np.testing.assert_array_equal(mapping_window_indices(frames, num_frames)[row], expected)
        np.testing.assert_array_equal(windows[row], semantics[expected].T)


def test_source_semantics_layout() -> None:
    coeffs = np.arange(257, dtype=np.float32)
    semantic = source_semantics(coeffs)
    np.testing.assert_array_equal(semantic[:64], np.arange(80, 144))
    np.testing.assert_array_equal(semantic[64:67], [224, 225, 226])
    np.testing.assert_array_equal(semantic[67:70], [254, 255, 256])
    full = source_semantics(coeffs, np.array([1.5, 2.0, 3.0]))
    assert full.shape == (73,)
    np.testing.assert_array_equal(full[70:], [1.5, 2.0, 3.0])
    assert source_window(full).shape == (1, 73, 27)
    with pytest.raises(ValueError, match="257"):
        source_semantics(np.zeros(70))


def test_a_blink_schedule_asked_in_order_is_the_whole_clips() -> None:
    """The stream's schedule keeps its generator where it got to (frame n costs what is new, not n draws)."""
    whole = blink_ratios(0, 5000, seed=9)
    schedule = BlinkSchedule(9)
    first = 0
    for count in [1, 4, 3, 37, 0, 5, 250, *([4] * 1000)]:
        np.testing.assert_array_equal(schedule.ratios(first, count), whole[first : first + count])
        first += count
    np.testing.assert_array_equal(schedule.ratios(first - 2, 2), whole[first - 2 : first])  # the same block again
    with pytest.raises(ValueError, match="in order"):
        schedule.ratios(0, 4)


@pytest.mark.parametrize("num_frames", [1, 33, 34, 100, 257])
def test_pose_windows_from_a_window_number_are_the_rest_of_the_list(num_frames: int) -> None:
    windows = pose_windows(num_frames)
    for first in range(len(windows) + 2):
        assert pose_windows(num_frames, first) == windows[first:]


def test_mapping_windows_from_rows_that_start_later() -> None:
    semantics = np.random.default_rng(2).standard_normal((60, 70)).astype(np.float32)
    frames = np.arange(30, 38)
    np.testing.assert_array_equal(
        mapping_windows(semantics[17:], frames, 60, first_row=17), mapping_windows(semantics, frames, 60)
    )
    with pytest.raises(ValueError, match="before 18"):
        mapping_windows(semantics[18:], frames, 60, first_row=18)
