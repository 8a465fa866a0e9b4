"""The streaming timeline gives the whole-clip coefficients, whatever the chunking (PyTorch stand-ins for
Triton: each request is run through the same reduced modules the reference pipeline uses)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from export.reference import AvatarInputs, Options, ReferencePipeline
from export.stages import StageFactory, Variant
from gateway.timeline import AudioTimeline, MelSpan, RenderRequest
from gateway.timeline import SadTalkerTimeline as Timeline
from lipsync.timeline import mapping_windows, source_semantics


@pytest.fixture(scope="module")
def factory() -> StageFactory:
    return StageFactory(Variant(checkpoints=None, seed=0))


def _run(factory: StageFactory, stage: str, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return factory.build(stage)(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)).numpy()


def _windows(factory: StageFactory, span: MelSpan) -> np.ndarray:
    mel = _run(factory, "mel", span.signal)[0]  # (T, 80)
    return mel[span.mel_index].transpose(0, 2, 1)[:, None]  # (K, 1, 80, 16)


def _stream(factory: StageFactory, timeline: Timeline, wav: np.ndarray, pieces: list[int]) -> list[RenderRequest]:
    rendered: list[RenderRequest] = []

    def pump() -> None:
        for request in timeline.motion_requests():
            timeline.set_exp(
                request, _run(factory, "audio2exp", _windows(factory, request.span), request.ref_exp, request.ratio)
            )
        for pose in timeline.pose_requests():
            windows = _windows(factory, pose.span)[None]
            style = np.array([3], dtype=np.int64)
            motion = _run(factory, "audio2pose", windows, pose.z, style, timeline.source[None, 64:70])[0]
            timeline.set_pose_motion(pose, motion)
        rendered.extend(timeline.render_requests())

    _feed(timeline, wav, pieces, pump)
    return rendered


def _feed(timeline: AudioTimeline, wav: np.ndarray, pieces: list[int], pump: Callable[[], None]) -> None:
    """Add the audio in these pieces (the rest at the end), pumping the requests after each; then drain."""
    position = 0
    for size in pieces:
        timeline.add_audio(wav[position : position + size])
        position += size
        pump()
        pump()  # results of this round can make more requests ready
    timeline.add_audio(wav[position:])
    timeline.finish()
    for _ in range(10_000):
        if timeline.done:
            return
        pump()
    raise AssertionError("the timeline stalled after the end")


def _speechlike(samples: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(samples) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.02 * rng.standard_normal(samples)
    ).astype(np.float32)


@pytest.mark.parametrize("pose", ["still", "audio"])
def test_chunk_sizes_and_arrival_give_the_whole_clip_windows(factory: StageFactory, pose: str) -> None:
    rng = np.random.default_rng(2)
    coeffs = rng.standard_normal(257).astype(np.float32) * 0.3
    source = source_semantics(coeffs)
    wav = _speechlike(640 * 83 + 217)
    options = Options(pose=pose, pose_style=3, seed=11, expression_scale=1.3)  # type: ignore[arg-type]
    reference = ReferencePipeline(factory)
    avatar = AvatarInputs(crop=np.zeros((256, 256, 3), np.uint8), coeffs=coeffs)
    semantics = reference.semantics(avatar, wav, options)
    expected = mapping_windows(semantics, np.arange(83), 83)

    streamed = {}
    for chunk_frames, pieces in [(4, [333] * 40), (8, [640 * 9, 5000, 17, 12000]), (16, [1 << 20])]:
        timeline = Timeline(source, pose, 1.3, True, 11, chunk_frames=chunk_frames)  # type: ignore[arg-type]
        requests = _stream(factory, timeline, wav, pieces)
        assert [r.chunk for r in requests] == list(range(len(requests)))
        assert [f for r in requests for f in r.frames] == list(range(83))
        windows = np.concatenate([r.windows for r in requests])
        audio = np.concatenate([r.audio for r in requests])
        np.testing.assert_array_equal(audio, wav[: 83 * 640])
        np.testing.assert_array_equal(timeline.audio_tail(), wav[83 * 640 :])
        streamed[chunk_frames] = windows
    # Identical across chunk sizes and arrival patterns: the requests sit on fixed grids.
    np.testing.assert_array_equal(streamed[4], streamed[8])
    np.testing.assert_array_equal(streamed[4], streamed[16])
    # Equal to the whole-clip reference up to the mel's float32 summation order (different signal lengths).
    error = np.linalg.norm(streamed[8] - expected) / np.linalg.norm(expected)
    assert error < 1e-5, error


def test_nothing_is_rendered_before_its_window_is_heard(factory: StageFactory) -> None:
    source = source_semantics(np.zeros(257, np.float32))
    timeline = Timeline(source, chunk_frames=8)
    wav = _speechlike(640 * 40)
    timeline.add_audio(wav[: 640 * 21])
    for request in timeline.motion_requests():
        timeline.set_exp(request, np.zeros((len(request.frames), 64), np.float32))
    # 21 frames heard: expression known for the first 16 (mel lookahead), so frames 0..2 have their
    # 13-frame mapping lookahead — not a whole chunk of 8 yet.
    assert timeline.render_requests() == []
    with pytest.raises(ValueError, match="non-finite"):
        timeline.add_audio(np.array([np.nan], np.float32))
    timeline.finish()
    with pytest.raises(ValueError, match="after the end"):
        timeline.add_audio(wav[:10])


def test_wav2lip_windows_are_the_whole_clips_whatever_the_chunking(factory: StageFactory) -> None:
    from export.mel import log_mel
    from gateway.timeline import Wav2LipTimeline
    from lipsync.wav2lip import wav2lip_mel_windows

    wav = _speechlike(640 * 37 + 321)  # a tail that is not a whole frame: upstream's mel reads it
    expected = wav2lip_mel_windows(log_mel(wav, crop_to_frames=False), 37)
    streamed = {}
    for chunk_frames, pieces in [(4, [333] * 80), (8, [640 * 9, 5000, 17]), (16, [1 << 20])]:
        timeline = Wav2LipTimeline(chunk_frames=chunk_frames, mel_block=4)
        rendered: list[RenderRequest] = []

        def pump(timeline: Wav2LipTimeline = timeline, rendered: list[RenderRequest] = rendered) -> None:
            for request in timeline.mel_requests():
                timeline.set_mel(request, _run(factory, "mel", request.span.signal)[0])
            rendered.extend(timeline.render_requests())

        _feed(timeline, wav, pieces, pump)
        assert [f for r in rendered for f in r.frames] == list(range(37))
        assert all(len(r.frames) == chunk_frames for r in rendered[:-1])
        streamed[chunk_frames] = np.concatenate([r.windows for r in rendered])
    np.testing.assert_array_equal(streamed[4], streamed[8])
    np.testing.assert_array_equal(streamed[4], streamed[16])
    error = np.linalg.norm(streamed[8] - expected) / np.linalg.norm(expected)
    assert error < 1e-5, error


def test_wav2lip_frames_wait_only_for_their_own_window() -> None:
    from gateway.timeline import Wav2LipTimeline

    timeline = Wav2LipTimeline(chunk_frames=1, mel_block=1)
    timeline.add_audio(_speechlike(640 * 6))  # 240 ms: frame 0's window (0..15) ends 212.5 ms in
    requests = timeline.mel_requests()
    assert [r.frames for r in requests] == [range(0, 1)]
    timeline.set_mel(requests[0], np.zeros((16, 80), np.float32))
    assert [r.frames for r in timeline.render_requests()] == [range(0, 1)]
