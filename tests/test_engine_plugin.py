"""The engine seam, proved from outside: an engine written here, registered only here, that streams through the
gateway's transports (``/ws/stream`` in both modes, ``POST /v1/lipsync``) without a line of gateway code
knowing it.

The "level" engine needs no model: its face is a square whose brightness follows the loudness of the frame's
audio, in the colour its own option ``bar`` names.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Iterator
from typing import Any, Literal

import numpy as np
import pytest
from gateway_helpers import decode_video, stream, wav_bytes
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.engines import register, unregister
from gateway.media.pasteback import PasteBack
from gateway.session.options import EngineOptions, SessionOptions
from gateway.session.timeline import AudioTimeline, RenderRequest
from gateway.settings import Settings
from gateway.triton.client import TritonClient
from gateway.triton.server import EmbeddedTriton
from lipsync.audio import SAMPLES_PER_VIDEO_FRAME

pytestmark = pytest.mark.triton

FACE = 32
CHANNEL = {"green": 1, "red": 0}


class LevelOptions(EngineOptions):
    engine: Literal["level"] = "level"
    bar: Literal["green", "red"] = "green"


class LevelTimeline(AudioTimeline):
    """A frame needs its own audio only: its RMS level drives it."""

    def render_requests(self) -> list[RenderRequest]:
        heard = self.num_frames if self.num_frames is not None else self.frames_heard

        def make(chunk: int, frames: range) -> RenderRequest | None:
            if len(frames) == 0 or frames.stop > heard:
                return None
            audio = self.audio_of(frames)
            levels = np.sqrt((audio.reshape(len(frames), SAMPLES_PER_VIDEO_FRAME) ** 2).mean(axis=1))
            return RenderRequest(chunk, frames, audio, levels.astype(np.float32)[:, None])

        return self._next_requests(make)


class LevelRun:
    def __init__(self, avatar: AvatarState, options: SessionOptions) -> None:
        self.timeline = LevelTimeline(options.chunk_frames, options.first_chunk_frames)
        framing = avatar.framings[options.framing]
        self.paste = PasteBack(framing.image, framing.box(avatar.box))
        self.lookahead_ms = 0.0
        self.audio_block = 1
        self.channel = CHANNEL[options.of(LevelOptions).bar]

    def calls(self) -> list[Coroutine[Any, Any, None]]:
        return []

    def render_requests(self) -> list[RenderRequest]:
        return self.timeline.render_requests()

    async def render(self, request: RenderRequest) -> np.ndarray:
        faces = np.zeros((len(request.frames), FACE, FACE, 3), np.uint8)
        faces[..., self.channel] = np.clip(request.windows[:, 0] * 4 * 255, 0, 255).astype(np.uint8)[:, None, None]
        return faces


class Level:
    name = "level"
    options_model = LevelOptions

    def __init__(self, audio_block: int = 4) -> None:
        self.audio_block = audio_block

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        return ()

    def portrait_part(self, portrait: Portrait) -> None:
        return None

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        return None

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> LevelRun:
        return LevelRun(avatar, options)

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> None:
        raise ValueError("the level engine keeps nothing in avatar records")


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTriton) -> Iterator[TestClient]:
    register(Level)  # the one registration line
    try:
        settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
        with TestClient(create_app(settings)) as test_client:
            yield test_client
    finally:
        unregister("level")


@pytest.fixture(scope="module")
def avatar(client: TestClient, astronaut_jpeg: bytes) -> dict[str, Any]:
    """The upload's answer. The astronaut (512²) is its own ``portrait`` framing: its box is in frame pixels."""
    response = client.post("/v1/avatars", files={"image": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
def avatar_id(avatar: dict[str, Any]) -> str:
    return str(avatar["avatar_id"])


def quiet_then_loud(frames_each: int) -> np.ndarray:
    """Silence, then a loud tone (int16 PCM), ``frames_each`` video frames of each."""
    n = frames_each * SAMPLES_PER_VIDEO_FRAME
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)
    return np.concatenate([np.zeros(n), tone * 32767]).astype(np.int16)


def face_colour(frames: list[np.ndarray], box: list[int]) -> np.ndarray:
    """(frames, 3) mean RGB of the middle of the face box (paste-back feathers only its edge)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 8
    return np.array([f[cy - r : cy + r, cx - r : cx + r].reshape(-1, 3).mean(axis=0) for f in frames])


def test_a_registered_engine_is_served_and_listed(client: TestClient) -> None:
    assert "level" in client.get("/v1/info").json()["engines"]
    assert "level: " in client.get("/readyz").json()["reason"]


def test_the_new_engine_streams_over_the_websocket(client: TestClient, avatar: dict[str, Any]) -> None:
    avatar_id = avatar["avatar_id"]
    pcm = quiet_then_loud(12)
    result = stream(client, avatar_id, pcm, piece=999, engine="level", bar="red", chunk_frames=4)
    assert result.ready["engine"] == "level" and result.ready["model_lookahead_ms"] == 0
    assert result.end is not None and result.end["frames"] == 24
    frames, _, _, audio_seconds = decode_video(result.mp4)
    assert len(frames) == 24 and audio_seconds == pytest.approx(24 / 25, abs=0.03)
    colour = face_colour(frames, avatar["box"])
    quiet, loud = colour[2:10], colour[14:22]  # away from the switch (and the encoder's settling)
    assert loud[:, 0].min() > 150 > 40 > quiet[:, 0].max(), colour[:, 0]  # its own option: a red square
    assert loud[:, 1].max() < 60


def test_the_new_engine_in_conversation_mode(client: TestClient, avatar_id: str) -> None:
    start = {"type": "start", "avatar_id": avatar_id, "mode": "conversation", "options": {"engine": "level"}}
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps(start))
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["mode"] == "conversation" and ready["engine"] == "level"
        ws.receive_bytes()  # init segment
        ws.send_bytes(quiet_then_loud(4).tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        while (message := ws.receive()).get("text") is None or json.loads(message["text"])["type"] != "end":
            pass
        end = json.loads(message["text"])
    assert end["frames"] >= 8 and end["timeline"]


def test_the_new_engine_renders_over_http_with_its_own_query_option(
    client: TestClient, astronaut_jpeg: bytes, avatar: dict[str, Any]
) -> None:
    response = client.post(
        "/v1/lipsync?engine=level&bar=green",
        files={
            "image": ("a.jpg", astronaut_jpeg, "image/jpeg"),
            "audio": ("s.wav", wav_bytes(quiet_then_loud(10)), "audio/wav"),
        },
    )
    assert response.status_code == 200, response.text
    frames, _, _, _ = decode_video(response.content)
    assert len(frames) == 20
    colour = face_colour(frames, avatar["box"])
    assert colour[12:18, 1].min() > 150 > 40 > colour[2:8, 1].max(), colour[:, 1]


def test_another_engines_options_are_refused_in_words(client: TestClient, avatar_id: str) -> None:
    start = {"type": "start", "avatar_id": avatar_id, "options": {"engine": "level", "pads": [0, 0, 0, 0]}}
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps(start))
        error = ws.receive_json()
    assert error["code"] == "bad_message" and "pads applies to the wav2lip engine, not level" in error["message"]
    start["options"] = {"engine": "wav2lip", "bar": "red"}
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps(start))
        error = ws.receive_json()
    assert error["code"] == "bad_message" and "bar applies to the level engine, not wav2lip" in error["message"]
