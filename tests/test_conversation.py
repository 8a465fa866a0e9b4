"""Conversation mode: idle on the wall clock, bursts spoken in order, interrupts; every frame equals the offline
render of the audio the session played (its recorded timeline). Wav2Lip engine (reduced models) on the real
embedded Triton; the session runs on a clock the test moves, so nothing waits on real time but Triton.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gateway_helpers import ManualClock, read_wav_int16
from starlette.testclient import TestClient
from video_helpers import clip_bytes, moving_face

from export.engines.wav2lip.reference import Wav2LipReference
from export.stages import StageFactory
from gateway.app import create_app
from gateway.avatars.portrait import AvatarLimits
from gateway.avatars.store import AvatarState, AvatarStore
from gateway.engines import engines, session_options
from gateway.engines.wav2lip.clip import ClipFaces
from gateway.engines.wav2lip.engine import LOOKAHEAD_MS as WAV2LIP_LOOKAHEAD_MS
from gateway.engines.wav2lip.face import Wav2LipAvatar
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.metrics import Metrics
from gateway.session.core import StreamSession
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.settings import Settings
from gateway.transport.webrtc_media import AvatarMedia
from gateway.triton.client import TritonClient
from gateway.triton.server import EmbeddedTriton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

FRAME = 0.04
OPTIONS = session_options(engine="wav2lip", mode="conversation", chunk_frames=8, first_chunk_frames=2)


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav).astype(np.float32) / 32768.0


@dataclass
class Conversing:
    """One conversation session on a manual clock, and everything it sent."""

    session: StreamSession
    clock: ManualClock
    faces: dict[int, np.ndarray] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    fragments: int = 0
    sent: list[np.ndarray] = field(default_factory=list)  # the audio given to the session, in order
    sink: AvatarMedia | None = None  # WebRTC's queue: played frame by frame as the clock moves

    async def until(self, frames: int, timeout_s: float = 120.0) -> None:
        """Wait (real time: Triton renders) until at least ``frames`` frames were sent."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.session.frames_sent < frames:
            assert asyncio.get_running_loop().time() < deadline, f"only {self.session.frames_sent} of {frames} frames"
            await asyncio.sleep(0.02)  # polling what the session sent, against a deadline

    async def play_until(self, frames: int, timeout_s: float = 120.0) -> None:
        """Move the clock until the sink has played ``frames`` frames (Triton renders in real time meanwhile)."""
        assert self.sink is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.sink.frames_played < frames:
            assert asyncio.get_running_loop().time() < deadline, f"only {self.sink.frames_played} of {frames} played"
            if self.sink.queued_frames == 0:  # nothing to play yet: wait for the renderer, not the clock
                await asyncio.sleep(0.02)
            else:
                await self.walk(FRAME)

    async def queued_a_chunk(self, timeout_s: float = 120.0) -> None:
        """Wait (real time, the clock still) until the sink holds a chunk it has not begun to play."""
        assert self.sink is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.sink.cut_point(-1) == -1:  # -1 back: every chunk queued has begun
            assert asyncio.get_running_loop().time() < deadline, "the renderer never got a chunk ahead"
            await asyncio.sleep(0.02)  # polling what the session handed over, against a deadline

    async def walk(self, seconds: float) -> None:
        """Move the clock frame by frame, letting the session act at each step."""
        for _ in range(round(seconds / FRAME)):
            self.clock.advance(FRAME)
            if self.sink is not None:  # a track takes a frame and its audio per frame of the clock
                self.sink.next_frame()
                self.sink.next_audio(640)
            for _ in range(5):
                await asyncio.sleep(0)

    def feed(self, audio: np.ndarray) -> None:
        self.sent.append(audio)
        self.session.feed(audio)

    def played(self, segments: list[dict[str, Any]]) -> np.ndarray:
        """The audio the session says it played, rebuilt from its segments and the audio given to it."""
        received = np.concatenate(self.sent) if self.sent else np.zeros(0, np.float32)
        parts = []
        for segment in segments:
            length = segment["end"] - segment["start"]
            if segment["kind"] == "silence":
                parts.append(np.zeros(length, np.float32))
            else:
                parts.append(received[segment["received"] : segment["received"] + length])
        return np.concatenate(parts)


async def _avatar(triton: TritonClient, portrait: bytes, engine: str = "wav2lip") -> AvatarState:
    avatar = await AvatarStore(AvatarLimits(), capacity_bytes=2**30).add(portrait)
    await engines()[engine].prepare(avatar, triton)
    return avatar


async def _converse(
    url: str,
    portrait: bytes,
    script: Callable[[Conversing], Awaitable[None]],
    sink: bool = False,
    options: SessionOptions = OPTIONS,
) -> Conversing:
    triton = TritonClient(url, timeout_s=120, metrics=Metrics())
    clock = ManualClock()
    try:
        avatar = await _avatar(triton, portrait, options.engine)
        holder: list[Conversing] = []

        def observe(request: RenderRequest, chunk: np.ndarray) -> None:
            for frame, face in zip(request.frames, chunk, strict=True):
                holder[0].faces[frame] = face

        async def collect(item: bytes | dict[str, Any]) -> None:
            if isinstance(item, bytes):
                holder[0].fragments += 1
            else:
                holder[0].stats.append(item)

        media = AvatarMedia(avatar.framings[options.framing].image) if sink else None
        session = StreamSession(
            avatar, options, engines()[options.engine], triton, Metrics(), observe=observe, clock=clock, sink=media
        )
        conversing = Conversing(session, clock, sink=media)
        holder.append(conversing)
        running = asyncio.create_task(session.run(collect))
        await asyncio.sleep(0)
        await script(conversing)
        conversing.session.end()
        while not running.done():  # what is queued is played on the clock: move it until the session ends
            await conversing.walk(0.2)
            await asyncio.wait({running}, timeout=0.05)
        await running
        return conversing
    finally:
        await triton.close()


def _check_exact(conversing: Conversing, factory: StageFactory, cut_at: int | None = None) -> np.ndarray:
    """The session's frames equal the offline render of the audio it played; returns that audio.

    ``cut_at``: an interrupt cut the audio at this frame. The frames sent before it whose look-ahead read the
    audio that was cut (at most Wav2Lip's look-ahead) are the only ones allowed to differ."""
    session = conversing.session
    segments = session.played_segments()
    played = conversing.played(segments)
    frames = played.size // 640
    assert sorted(conversing.faces) == list(range(frames)) == list(range(session.frames_sent))
    avatar = session.avatar
    if avatar.clip is None:
        face_input = avatar.part("wav2lip", Wav2LipAvatar).face(avatar, OPTIONS.of(Wav2LipOptions)).face_input
    else:  # each frame's own clip picture, frame n on clip frame ping-pong(n)
        framing = avatar.framings[OPTIONS.framing]
        clip_faces = ClipFaces(avatar.clip, framing, avatar.width, avatar.height, OPTIONS.of(Wav2LipOptions))
        face_input = clip_faces.inputs(range(frames))
    reference = Wav2LipReference(factory).render(face_input, played)
    served = np.stack([conversing.faces[i] for i in range(frames)])
    difference = np.abs(served.astype(np.int16) - reference.astype(np.int16))
    if cut_at is not None:
        read_past_cut = range(max(0, cut_at - math.ceil(WAV2LIP_LOOKAHEAD_MS / 40)), cut_at)
        keep = np.ones(frames, bool)
        keep[read_past_cut.start : read_past_cut.stop] = False
        difference = difference[keep]
    assert difference.max() <= 1 and (difference == 0).mean() > 0.98
    return played


def test_idle_then_a_burst_in_order_then_exact(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    burst = speech[: 16000 * 5 // 2]  # longer than the audio admitted ahead of the clock

    async def script(c: Conversing) -> None:
        await c.walk(2.0)
        # Nobody spoke for 2 s: idle frames were played and sent all the same.
        await c.until(26)
        segments = c.session.played_segments()
        assert [s["kind"] for s in segments] == ["silence"] and segments[0]["end"] >= 38 * 640
        # A TTS burst, faster than real time: queued behind what is scheduled, spoken in order.
        c.session.utterance("u1")
        c.feed(burst)
        assert c.session.conversation is not None and c.session.conversation.queued_samples > 0  # not all at once
        await c.walk(3.0)

    c = asyncio.run(_converse(triton_server.grpc_url, astronaut_jpeg, script))
    segments = c.session.played_segments()
    kinds = [s["kind"] for s in segments]
    assert kinds[:2] == ["silence", "speech"] and set(kinds[2:]) <= {"silence"}
    speech_segment = segments[1]
    assert speech_segment["utterance"] == "u1" and speech_segment["received"] == 0
    assert speech_segment["end"] - speech_segment["start"] == burst.size  # nothing dropped, nothing sped up
    first = next(u for s in c.stats for u in s.get("utterances", []))
    assert first["utterance_id"] == "u1" and first["first_frame"] == speech_segment["start"] // 640
    # The first fragment is small; the later ones are chunk-sized.
    assert [s["frames"] for s in c.stats[:3]] == [2, 10, 18]
    assert "first_fragment_parts" in c.stats[0] and "behind_ms" in c.stats[-1]
    _check_exact(c, reduced_factory)


def test_a_clip_avatar_idles_and_speaks_on_its_own_frames_with_nothing_jumping(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, speech: np.ndarray
) -> None:
    clip = clip_bytes(moving_face(20))

    async def script(c: Conversing) -> None:
        await c.walk(2.0)  # idle: the clip plays, Wav2Lip on silence
        await c.until(26)
        c.session.utterance("u1")
        c.feed(speech[:16000])
        await c.walk(2.0)

    c = asyncio.run(_converse(triton_server.grpc_url, clip, script))
    segments = c.session.played_segments()
    assert [s["kind"] for s in segments][:2] == ["silence", "speech"]
    # Idle and speaking frames alike are Wav2Lip's on the clip frame each frame shows, across the switch too:
    # every frame equals the offline render of the played audio on those frames.
    _check_exact(c, reduced_factory)
    switch = segments[1]["start"] // 640
    assert c.session.avatar.clip is not None
    shown = [c.session.avatar.clip.index(n) for n in range(switch - 3, switch + 3)]
    assert np.abs(np.diff(shown)).max() == 1  # the picture keeps moving through the clip, one frame a frame


def test_an_interrupt_drops_the_rest_and_the_next_utterance_is_spoken(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    long_answer, reply = speech[: 16000 * 3], speech[16000 : 16000 + 8000]
    interrupted: dict[str, Any] = {}

    async def script(c: Conversing) -> None:
        await c.walk(0.6)
        c.session.utterance("answer")
        c.feed(long_answer)
        assert c.session.conversation is not None
        first = c.session.conversation.utterances["answer"].first_frame
        assert first is not None
        await c.walk(1.0)
        await c.until(first + 10)  # the answer is being spoken: some of its frames were sent
        sent = c.session.frames_sent
        interrupted.update(c.session.interrupt())
        assert c.session.conversation.queued_samples == 0
        # The lips stop at once: nothing after the frames already committed (sent, or being encoded) speaks.
        assert interrupted["frame"] == interrupted["next_frame"] and sent <= interrupted["frame"] <= sent + 8
        await c.walk(1.5)
        c.session.utterance("reply")
        c.feed(reply)
        await c.walk(1.5)

    c = asyncio.run(_converse(triton_server.grpc_url, astronaut_jpeg, script))
    segments = c.session.played_segments()
    answer = [s for s in segments if s.get("utterance") == "answer"]
    played_answer = sum(s["end"] - s["start"] for s in answer)
    assert 0 < played_answer < long_answer.size  # cut short
    # The answer's played audio ends exactly at the first idle frame; idle follows it.
    assert interrupted["type"] == "interrupted" and answer[-1]["end"] == interrupted["frame"] * 640
    after = [s for s in segments if s["start"] >= answer[-1]["end"]]
    assert after[0]["kind"] == "silence"
    replies = [s for s in segments if s.get("utterance") == "reply"]
    assert sum(s["end"] - s["start"] for s in replies) == reply.size  # spoken whole, after the idle
    assert replies[0]["received"] == long_answer.size  # the dropped rest of the answer is skipped
    played = _check_exact(c, reduced_factory, cut_at=interrupted["frame"])
    assert np.abs(played[interrupted["frame"] * 640 : replies[0]["start"]]).max() == 0  # idle is silence


def test_the_idle_fragments_after_an_interrupt_are_sent_when_due_not_when_their_silence_would_be(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """Over fMP4 the cut lies at the frames already sent, up to a fragment past the send horizon: the idle fragment
    that starts there must be renderable at once (its frames' silence and look-ahead played by the interrupt),
    not wait until that silence came due on the clock (≈ 1.6 s later: what the page saw). And the idle
    fragments after it follow one a fragment's time later, as a player that jumped to the cut plays them, not
    once the clock has caught up with the speech sent ahead of it (the page froze ≈ 1.5 s)."""

    async def script(c: Conversing) -> None:
        await c.walk(0.6)
        c.session.utterance("answer")
        c.feed(speech[: 16000 * 3])
        conversation = c.session.conversation
        assert conversation is not None
        first = conversation.utterances["answer"].first_frame
        assert first is not None
        await c.walk(1.0)
        await c.until(first + 10)
        # Everything the clock allows is sent: the next fragment waits for its send time (the page's case).
        deadline = asyncio.get_running_loop().time() + 60
        while conversation.send_time(c.session.frames_sent) <= c.clock.now():
            assert asyncio.get_running_loop().time() < deadline, "the renderer never reached the send horizon"
            await asyncio.sleep(0.02)  # polling what the session sent, against a deadline
        cut = c.session.interrupt().next_frame
        assert cut == c.session.frames_sent
        # The clock moves only to the idle fragment's send time, then stands still: the fragment must come.
        await c.walk(max(0.0, conversation.send_time(cut) - c.clock.now()) + FRAME)
        await c.until(cut + 1, timeout_s=60)
        # Two fragments' time later (and no more), the two idle fragments after it were sent too.
        await c.walk(2 * OPTIONS.chunk_frames * FRAME)
        await c.until(cut + 2 * OPTIONS.chunk_frames + 1, timeout_s=60)

    c = asyncio.run(_converse(triton_server.grpc_url, astronaut_jpeg, script))
    assert c.session.frames_sent > 0


def test_over_webrtc_an_interrupt_takes_back_what_was_not_played_and_the_frames_stay_exact(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """With a frame sink (WebRTC's tracks) the cut may fall before frames already rendered and handed over: they
    are dropped and rendered again from silence, and the played frames are still the offline render of the
    played audio (the exception as over the WebSocket: frames before the cut whose look-ahead read past it)."""
    interrupted: dict[str, Any] = {}
    handed_over: list[int] = []

    async def script(c: Conversing) -> None:
        assert c.sink is not None
        await c.walk(0.6)
        c.session.utterance("answer")
        c.feed(speech[: 16000 * 3])
        first = c.session.conversation.utterances["answer"].first_frame  # type: ignore[union-attr]
        assert first is not None
        await c.play_until(first + 10)  # 0.4 s of the answer on screen
        await c.queued_a_chunk()  # the renderer has run ahead of the screen (the clock stands still meanwhile)
        handed_over.append(c.session.frames_sent)
        interrupted.update(c.session.interrupt())
        await c.walk(1.5)

    c = asyncio.run(_converse(triton_server.grpc_url, astronaut_jpeg, script, sink=True))
    assert c.sink is not None
    cut = interrupted["next_frame"]
    assert interrupted["frame"] == cut < handed_over[0]  # frames already handed to the tracks were taken back
    answer = [s for s in c.session.played_segments() if s.get("utterance") == "answer"]
    assert answer[-1]["end"] == cut * 640  # the played answer ends at the cut
    assert "muxer" not in vars(c.session)  # the sink took every frame: no fMP4 encoders were opened
    _check_exact(c, reduced_factory, cut_at=cut)


def test_a_sadtalker_conversation_stops_speaking_at_once_too(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """SadTalker's conversation timeline rewinds as Wav2Lip's does (its requests after the cut equal those of a
    timeline that never heard the rest: tests/test_stream_timeline.py): the interrupt is hard there too."""
    interrupted: dict[str, Any] = {}
    options = session_options(engine="sadtalker", mode="conversation", chunk_frames=4, first_chunk_frames=2)

    async def script(c: Conversing) -> None:
        await c.walk(0.2)
        c.session.utterance("answer")
        c.feed(speech[: 16000 * 2])
        first = c.session.conversation.utterances["answer"].first_frame  # type: ignore[union-attr]
        assert first is not None
        await c.walk(0.6)
        await c.until(first + 6)
        interrupted.update(c.session.interrupt())
        await c.walk(0.6)

    c = asyncio.run(_converse(triton_server.grpc_url, astronaut_jpeg, script, options=options))
    cut = interrupted["next_frame"]
    assert interrupted["frame"] == cut  # the first idle frame is the first one not yet sent: hard
    segments = c.session.played_segments()
    answer = [s for s in segments if s.get("utterance") == "answer"]
    assert answer and answer[-1]["end"] == cut * 640  # the answer's played audio ends at the cut
    assert all(s["kind"] == "silence" for s in segments if s["start"] >= cut * 640)
    assert sorted(c.faces) == list(range(c.session.frames_sent))


def test_conversation_over_the_socket_with_the_wall_clock(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """The protocol end to end on the real clock: idle fragments, an utterance, an interrupt, `end` with the
    played timeline; and the mistakes a client can make are answered in words."""
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        avatar_id = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()[
            "avatar_id"
        ]
        start = {"type": "start", "mode": "conversation", "avatar_id": avatar_id, "options": {"engine": "wav2lip"}}
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps(start))
            ready = ws.receive_json()
            assert ready["mode"] == "conversation" and ready["limits"]["max_ahead_ms"] == 500
            assert ready["limits"]["idle_timeout_s"] is None  # conversations idle by design
            ws.receive_bytes()  # init segment
            ws.receive_bytes()  # an idle fragment arrives with no audio sent at all
            ws.send_text(json.dumps({"type": "utterance", "id": "hello"}))
            ws.send_bytes((speech[:16000] * 32768).astype("<i2").tobytes())
            ws.send_text(json.dumps({"type": "interrupt"}))
            messages = []
            while not any(m.get("type") == "interrupted" for m in messages):
                message = ws.receive()
                if message.get("text"):
                    messages.append(json.loads(message["text"]))
            ws.send_text(json.dumps({"type": "end"}))
            while (message := ws.receive()).get("text") is None or json.loads(message["text"])["type"] != "end":
                pass
            end = json.loads(message["text"])
        assert end["frames"] > 0 and {s["kind"] for s in end["timeline"]} <= {"speech", "silence"}
        assert end["timeline"][0]["kind"] == "silence"

        def refused(messages: list[dict[str, Any] | bytes], mode: str = "clip") -> dict[str, Any]:
            with client.websocket_connect("/ws/stream") as ws:
                ws.send_text(json.dumps({**start, "mode": mode}))
                assert ws.receive_json()["type"] == "ready"
                for message in messages:
                    if isinstance(message, bytes):
                        ws.send_bytes(message)
                    else:
                        ws.send_text(json.dumps(message))
                while True:
                    payload = ws.receive()
                    if payload.get("text") and json.loads(payload["text"])["type"] == "error":
                        return dict(json.loads(payload["text"]))

        assert "conversation-mode" in refused([{"type": "interrupt"}])["message"]
        # Five seconds queued take five seconds to play: the session is still there to answer what follows `end`.
        queued = (speech[: 16000 * 5] * 32768).astype("<i2").tobytes()
        late = refused([queued, {"type": "end"}, {"type": "utterance", "id": "x"}], "conversation")
        assert "after `end`" in late["message"]
        twice = refused([{"type": "utterance", "id": "a"}, {"type": "utterance", "id": "a"}], "conversation")
        assert "used before" in twice["message"]
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps({**start, "audio": {"format": "file"}}))
            assert "live PCM" in ws.receive_json()["message"]


def test_a_conversation_has_its_own_long_cap_and_a_bounded_queue(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """A conversation outlives `max_session_seconds` (it runs in flat memory) and ends at
    `max_conversation_seconds` of wall time; its queued audio stays within `max_session_seconds` (on a clock
    the test moves)."""
    settings = Settings(  # type: ignore[call-arg]
        triton_url=triton_server.grpc_url, demo=True, max_session_seconds=1.0, max_conversation_seconds=2.0
    )

    def error_of(ws: Any) -> dict[str, Any]:
        while True:
            message = ws.receive()
            if message.get("text") and (payload := json.loads(message["text"]))["type"] == "error":
                return dict(payload)

    with TestClient(create_app(settings)) as client:
        clock = ManualClock()
        client.app.state.ctx.clock = clock  # type: ignore[attr-defined]
        avatar_id = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()[
            "avatar_id"
        ]
        start = {"type": "start", "mode": "conversation", "avatar_id": avatar_id, "options": {"engine": "wav2lip"}}
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps(start))
            ready = ws.receive_json()
            assert ready["limits"]["max_conversation_seconds"] == 2.0 and ready["limits"]["max_session_seconds"] == 1.0
            clock.advance(1.5)  # past a clip's limit: a conversation goes on
            ws.send_bytes(np.zeros(160, "<i2").tobytes())
            ws.send_text(json.dumps({"type": "interrupt"}))
            while (message := ws.receive()).get("text") is None or json.loads(message["text"])["type"] != "interrupted":
                assert message.get("text") is None or json.loads(message["text"])["type"] != "error", message
            clock.advance(1.0)  # past its own
            ws.send_bytes(np.zeros(160, "<i2").tobytes())
            error = error_of(ws)
            assert error["code"] == "too_large" and "limit of 2 s" in error["message"]
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps(start))
            assert ws.receive_json()["type"] == "ready"
            ws.send_bytes((speech[: 16000 * 3] * 32768).astype("<i2").tobytes())  # ≈ 2 s of it queued at once
            error = error_of(ws)
            assert error["code"] == "too_large" and "queued" in error["message"]
        assert client.app.state.ctx.active_sessions == 0  # type: ignore[attr-defined]


@pytest.mark.triton
def test_audio_that_arrives_before_the_run_starts_is_spoken_not_preceded_by_silence(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    """A client may send audio right after `ready`, before the session's run has sent its init segment."""

    async def heard() -> int:
        triton = TritonClient(triton_server.grpc_url, timeout_s=120, metrics=Metrics())
        try:
            avatar = await _avatar(triton, astronaut_jpeg)
            session = StreamSession(avatar, OPTIONS, engines()["wav2lip"], triton, Metrics(), clock=ManualClock())
            session.feed(speech[:3200])
            return session.timeline.samples_heard
        finally:
            await triton.close()

    # Counted from a clock at 0, the manual clock's 1000 s would have been 25,000 frames of overdue silence.
    assert asyncio.run(heard()) == 3200
