"""The streaming timeline gives the whole-clip coefficients, whatever the chunking (PyTorch stand-ins for
Triton: each request is run through the same reduced modules the reference pipeline uses)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
import torch

from export.engines.sadtalker.reference import AvatarInputs, Options, ReferencePipeline
from export.stages import StageFactory, Variant
from gateway.engines.sadtalker.timeline import SadTalkerTimeline as Timeline
from gateway.session.timeline import AudioTimeline, MelSpan, RenderRequest
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
    from gateway.engines.wav2lip.timeline import Wav2LipTimeline
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
    from gateway.engines.wav2lip.timeline import Wav2LipTimeline

    timeline = Wav2LipTimeline(chunk_frames=1, mel_block=1)
    timeline.add_audio(_speechlike(640 * 6))  # 240 ms: frame 0's window (0..15) ends 212.5 ms in
    requests = timeline.mel_requests()
    assert [r.frames for r in requests] == [range(0, 1)]
    timeline.set_mel(requests[0], np.zeros((16, 80), np.float32))
    assert [r.frames for r in timeline.render_requests()] == [range(0, 1)]


@pytest.mark.parametrize("after_samples", [640 * 30 + 77, 640 * 2 + 10])
def test_a_wav2lip_rewind_renders_as_if_the_audio_had_stopped_there(after_samples: int) -> None:
    """An interrupt cuts the audio at the first frame not yet sent: from there, the frames are those of a timeline
    that never heard the rest, whatever was requested or answered for them before. (A short rest: the clip
    ends soon after the cut, so its last windows move back before where the longer audio's ended.)"""
    from gateway.engines.wav2lip.timeline import Wav2LipTimeline

    speech, after = _speechlike(640 * 60), 0.5 * _speechlike(after_samples)[::-1].copy()
    cut = 2 + 8 * 3  # a chunk's first frame (first chunk 2 frames, then 8)

    def fresh() -> Wav2LipTimeline:
        return Wav2LipTimeline(chunk_frames=8, mel_block=4, first_chunk_frames=2)

    streamed = fresh()
    streamed.hold_from(cut)  # the session's writer committed the frames before it
    streamed.add_audio(speech)
    before = _FakeModels.pump(streamed) + _FakeModels.pump(streamed)
    assert before[-1].frames.stop > cut + 8  # frames past the cut were requested with the speech
    streamed.add_audio(speech[: 640 * 4])  # more audio, and a mel request for it, made before the cut
    stale = streamed.mel_requests()
    assert stale
    with pytest.raises(ValueError, match="before what this timeline keeps"):
        streamed.rewind(cut - 8)
    assert streamed.rewind(cut)
    assert streamed.samples_heard == cut * 640 and streamed.next_frame == cut
    for request in stale:  # answered after the cut: ignored
        streamed.set_mel(request, _fake_mel(request.span.signal))
    _assert_renders_as_if_never_heard(streamed, fresh(), speech, cut, after)


@pytest.mark.parametrize("after_samples", [640 * 30 + 77, 640 * 2 + 10])
def test_a_sadtalker_rewind_renders_as_if_the_audio_had_stopped_there(after_samples: int) -> None:
    """As for Wav2Lip: from the cut on, every render request (its mapping windows of 27 frames of coefficients)
    is that of a timeline that never heard the rest; the expression blocks that read past the cut are made
    again, and answers to the ones asked before it are ignored."""
    speech, after = _speechlike(640 * 60), 0.5 * _speechlike(after_samples)[::-1].copy()
    cut = 2 + 4 * 6  # a chunk's first frame (first chunk 2 frames, then 4)

    def fresh() -> Timeline:
        timeline = _timeline("sadtalker", chunk_frames=4)
        assert isinstance(timeline, Timeline)
        return timeline

    streamed = fresh()
    streamed.hold_from(cut)
    streamed.add_audio(speech)
    before = _FakeModels.pump(streamed) + _FakeModels.pump(streamed)
    assert before[-1].frames.stop > cut + 8  # frames past the cut were requested with the speech
    streamed.add_audio(speech[: 640 * 8])  # more audio, and an expression request for it, made before the cut
    stale = streamed.motion_requests()
    assert stale
    with pytest.raises(ValueError, match="before what this timeline keeps"):
        streamed.rewind(cut - 4)
    assert streamed.rewind(cut)
    assert streamed.samples_heard == cut * 640 and streamed.next_frame == cut
    for request in stale:  # answered after the cut: ignored
        streamed.set_exp(request, np.full((len(request.frames), 64), 99.0, np.float32))
    _assert_renders_as_if_never_heard(streamed, fresh(), speech, cut, after)


def _assert_renders_as_if_never_heard(
    rewound: AudioTimeline, never: AudioTimeline, speech: np.ndarray, cut: int, after: np.ndarray
) -> None:
    """After its rewind to ``cut``, ``rewound`` hears ``after`` and ends; its render requests from the cut on equal
    those of a fresh timeline (``never``) that heard only the speech up to the cut, then ``after``."""
    rewound.add_audio(after)
    rewound.finish()
    got = _FakeModels.pump(rewound) + _FakeModels.pump(rewound)
    never.add_audio(np.concatenate([speech[: cut * 640], after]))
    never.finish()
    whole = _FakeModels.pump(never) + _FakeModels.pump(never)
    expected = [r for r in whole if r.frames.start >= cut]
    assert [r.frames for r in got] == [r.frames for r in expected]
    for mine, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.windows, want.windows)
        np.testing.assert_array_equal(mine.audio, want.audio)


def test_a_sadtalker_timeline_with_a_moving_head_cannot_be_rewound() -> None:
    timeline = _timeline("sadtalker-audio")
    timeline.hold_from(0)
    timeline.add_audio(_speechlike(640 * 10))
    assert timeline.rewind(2) is False and timeline.samples_heard == 640 * 10  # nothing changed


# --------------------------------------------------------------------------------------- long sessions, memory


def _fake_mel(signal: np.ndarray) -> np.ndarray:
    """A stand-in for the `mel` model with its framing (mel frame t reads padded samples 200·t … 200·t + 799):
    every tenth sample, so that a span one sample off gives other windows, with no arithmetic to blur it."""
    frames = (signal.shape[-1] - 800) // 200 + 1
    return np.lib.stride_tricks.sliding_window_view(signal[0], 800)[::200][:frames, ::10].copy()


class _FakeModels:
    """Deterministic functions of each request's inputs in place of Triton: equal inputs, equal outputs."""

    @staticmethod
    def pump(timeline: AudioTimeline) -> list[RenderRequest]:
        from gateway.engines.wav2lip.timeline import Wav2LipTimeline

        if isinstance(timeline, Wav2LipTimeline):
            for request in timeline.mel_requests():
                timeline.set_mel(request, _fake_mel(request.span.signal))
        else:
            assert isinstance(timeline, Timeline)
            for motion in timeline.motion_requests():
                windows = _fake_mel(motion.span.signal)[motion.span.mel_index]  # (K, 16, 80)
                timeline.set_exp(motion, windows.mean(axis=1)[:, :64] + motion.ratio)
            for pose in timeline.pose_requests():
                windows = _fake_mel(pose.span.signal)[pose.span.mel_index]
                timeline.set_pose_motion(pose, windows.mean(axis=1)[:, :6] + pose.z[:, :6])
        return timeline.render_requests()


def _timeline(engine: str, chunk_frames: int = 8) -> AudioTimeline:
    from gateway.engines.wav2lip.timeline import Wav2LipTimeline

    if engine == "wav2lip":
        return Wav2LipTimeline(chunk_frames=chunk_frames, mel_block=4, first_chunk_frames=2)
    pose = "audio" if engine == "sadtalker-audio" else "still"
    source = source_semantics(np.random.default_rng(3).standard_normal(257).astype(np.float32))
    return Timeline(source, pose, 1.1, True, 5, chunk_frames=chunk_frames, motion_block=4, first_chunk_frames=2)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["wav2lip", "sadtalker", "sadtalker-audio"])
def test_a_long_stream_keeps_only_what_its_next_frames_need_and_renders_the_same(engine: str) -> None:
    """Minutes of audio in uneven pieces: every request equals the one a timeline that keeps everything makes
    (so the trimming changes no frame), and the trimmed timeline holds a bound that does not grow with the
    stream (the old one held all of it: ≈ 15 MB a minute with Wav2Lip's mel windows)."""
    wav = _speechlike(16000 * 150 + 417)
    trimmed, whole = _timeline(engine), _timeline(engine)
    whole._release = lambda: None  # type: ignore[method-assign]  # the reference: nothing is let go
    pieces = np.random.default_rng(4).integers(1, 4000, size=wav.size // 1000)
    bounds = [int(b) for b in np.cumsum(pieces) if b < wav.size]
    kept: list[int] = []
    position, count = 0, 0
    for bound in [*bounds, wav.size]:
        for timeline in (trimmed, whole):
            timeline.add_audio(wav[position:bound])
            if bound == wav.size:
                timeline.finish()
        position = bound
        for _ in range(3 if bound == wav.size else 1):
            got, expected = _FakeModels.pump(trimmed), _FakeModels.pump(whole)
            assert [r.frames for r in got] == [r.frames for r in expected]
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a.windows, b.windows)
                np.testing.assert_array_equal(a.audio, b.audio)
            count += sum(len(r.frames) for r in got)
        kept.append(trimmed.retained_bytes)
    assert trimmed.done and whole.done and count == wav.size // 640
    np.testing.assert_array_equal(trimmed.audio_tail(), whole.audio_tail())
    assert max(kept) < 3 * 2**20 < whole.retained_bytes  # a few seconds of each buffer, not 150 s


def test_a_long_wav2lip_stream_is_the_whole_clips_windows() -> None:
    """Against the whole clip's windows (same stand-in mel): the trimmed buffers read the right samples."""
    from lipsync.audio import centre_pad, preemphasis
    from lipsync.wav2lip import wav2lip_mel_windows

    wav = _speechlike(16000 * 75 + 333)
    frames = wav.size // 640
    expected = wav2lip_mel_windows(_fake_mel(centre_pad(preemphasis(wav))[None]), frames)
    timeline = _timeline("wav2lip", chunk_frames=16)
    got: list[RenderRequest] = []
    _feed(
        timeline, wav, [1234, 640 * 30, 7, 16000 * 20, *([999] * 1000)], lambda: got.extend(_FakeModels.pump(timeline))
    )
    assert [f for r in got for f in r.frames] == list(range(frames))
    np.testing.assert_array_equal(np.concatenate([r.windows for r in got]), expected)
    np.testing.assert_array_equal(np.concatenate([r.audio for r in got]), wav[: frames * 640])


@pytest.mark.parametrize("engine", ["wav2lip", "sadtalker"])
def test_a_conversation_of_many_minutes_runs_in_flat_memory(engine: str) -> None:
    """A conversation idling at 25 fps with a 3 s burst every 20 s, on a simulated clock: what it holds after
    12 minutes is what it held after 2 (the old timeline kept every sample, mel window and coefficient:
    ≈ 9–15 MB a minute); the played timeline stays a few segments per utterance."""
    import tracemalloc

    from gateway.engines.sadtalker.engine import LOOKAHEAD_MS as SADTALKER_LOOKAHEAD_MS
    from gateway.engines.wav2lip.engine import LOOKAHEAD_MS as WAV2LIP_LOOKAHEAD_MS
    from gateway.session.conversation import FRAME_S, Conversation

    timeline = _timeline(engine)
    lookahead = (WAV2LIP_LOOKAHEAD_MS if engine == "wav2lip" else SADTALKER_LOOKAHEAD_MS["still"]) + 3 * 40
    conversation = Conversation(timeline, lookahead_ms=lookahead)
    burst = _speechlike(16000 * 3)
    rendered = 0
    held: dict[int, int] = {}
    tracemalloc.start()
    try:
        for tick in range(1, 25 * 60 * 12 + 1):  # frame boundaries of the (simulated) wall clock
            now = tick * FRAME_S
            if tick % 500 == 250:  # every 20 s, from 10 s on
                conversation.utterance(f"u{tick}")
                conversation.feed(burst, now)
            conversation.advance(now)
            for request in _FakeModels.pump(timeline):
                assert request.frames.start == rendered  # in order, none skipped
                rendered = request.frames.stop
                conversation.first_frames_in(request.frames, now)
            if tick % (25 * 60) == 0:
                held[tick // (25 * 60)] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert rendered > 25 * 60 * (12 - 0.1)  # kept up with the clock (but for the look-ahead and margin)
    assert held[12] - held[2] < 256 * 1024, {minute: round(b / 2**20, 2) for minute, b in held.items()}
    assert timeline.retained_bytes < 2**20
    assert len(conversation.segments) <= 2 * 36 + 1 and not conversation.utterances  # all reported, let go
    kinds = [s.kind for s in conversation.segments]
    assert kinds[0] == "silence" and all(a != b for a, b in pairwise(kinds))  # merged
