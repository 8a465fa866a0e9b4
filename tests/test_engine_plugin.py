"""The engine seam, proved from outside: an engine written here, registered only here, that streams through the
gateway's transports (``/ws/stream`` in both modes, ``POST /v1/lipsync``) without a line of gateway code
knowing it.

The "level" engine needs no model: its face is a square whose brightness follows the loudness of the frame's
audio (times its option ``gain``), in the colour its own option ``bar`` names. The page offers both
(``GET /v1/info`` describes them; tests/test_web.py streams it from the page).
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pytest
from gateway_helpers import decode_video, stream, wav_bytes
from pydantic import Field
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.engines import register, registered, same_picture, unregister
from gateway.engines.page import Control
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
    label: ClassVar[str] = "Level — a square as loud as the speech"

    engine: Literal["level"] = "level"
    bar: Annotated[Literal["green", "red"], Control(choices={"red": "Red"})] = Field("green", title="Bar colour")
    gain: Annotated[float, Control(more=True)] = Field(4.0, gt=0, le=8)


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
        self.paste = same_picture(PasteBack(framing.image, framing.box(avatar.box)))
        self.lookahead_ms = 0.0
        self.audio_block = 1
        self.channel = CHANNEL[options.of(LevelOptions).bar]
        self.gain = options.of(LevelOptions).gain

    def calls(self) -> list[Coroutine[Any, Any, None]]:
        return []

    def render_requests(self) -> list[RenderRequest]:
        return self.timeline.render_requests()

    async def render(self, request: RenderRequest) -> np.ndarray:
        faces = np.zeros((len(request.frames), FACE, FACE, 3), np.uint8)
        level = np.clip(request.windows[:, 0] * self.gain * 255, 0, 255).astype(np.uint8)
        faces[..., self.channel] = level[:, None, None]
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


def test_info_describes_each_engines_own_options_from_its_model(client: TestClient) -> None:
    """The page's controls for an engine come from its options model: the test engine gets its own."""
    described = client.get("/v1/info").json()["engine_options"]
    assert list(described) == list(registered())  # every engine of the gateway, the default first
    assert described["level"] == {
        "label": "Level — a square as loud as the speech",
        "options": [
            {
                "name": "bar",
                "label": "Bar colour",
                "hint": None,
                "kind": "choice",
                "default": "green",
                "choices": [{"value": "green", "label": "green"}, {"value": "red", "label": "Red"}],
                "min": None,
                "max": None,
                "step": None,
                "integer": False,
                "more": False,
            },
            {
                "name": "gain",
                "label": "Gain",  # no title: the field's name
                "hint": None,
                "kind": "range",  # a float between two bounds
                "default": 4.0,
                "choices": [],
                "min": 0,
                "max": 8,
                "step": 0.08,  # a hundredth of the range
                "integer": False,
                "more": True,
            },
        ],
        "takes_video": False,  # it does not declare takes_video: photos only
    }
    assert described["wav2lip"]["takes_video"] is True and described["sadtalker"]["takes_video"] is False
    # The built-in engines describe theirs the same way; the options every engine takes are the page's own.
    sadtalker = {option["name"]: option for option in described["sadtalker"]["options"]}
    assert list(sadtalker) == ["pose", "expression_scale", "pose_style", "blink"]
    pose_style = sadtalker["pose_style"]
    assert (pose_style["kind"], pose_style["integer"], pose_style["min"], pose_style["max"]) == ("number", True, 0, 45)
    assert sadtalker["expression_scale"]["kind"] == "range" and sadtalker["expression_scale"]["step"] == 0.1
    assert sadtalker["blink"]["kind"] == "checkbox" and sadtalker["blink"]["default"] is True
    wav2lip = described["wav2lip"]["options"]
    assert [option["name"] for option in wav2lip] == ["blend"]  # pads (four numbers) has no control on the page
    assert [choice["value"] for choice in wav2lip[0]["choices"]] == ["lower_face", "box"]


def test_the_page_names_no_engine() -> None:
    """The page builds the engine choice and each engine's own options from GET /v1/info."""
    web = Path(__file__).resolve().parent.parent / "web"
    builtin = [name for name in registered() if name != "level"]  # the gateway's own: the registry's lines
    assert builtin
    for path in [*web.glob("*.js"), web / "index.html", web / "style.css"]:
        text = path.read_text().lower()
        assert [name for name in builtin if name in text] == [], path.name


def test_an_engine_declares_the_models_it_has_int8_graphs_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """LIPSYNC_INT8_MODELS takes what the registered engines declare, and nothing the settings know by name."""

    class Quantized(Level):
        name = "quantized"
        int8_models = ("level_face",)

    monkeypatch.setenv("LIPSYNC_INT8_MODELS", "level_face")
    with pytest.raises(ValueError, match="level_face cannot be served from an int8 graph"):
        Settings()
    register(Quantized)
    try:
        assert Settings().int8_models == ["level_face"]
    finally:
        unregister("quantized")


def test_the_export_names_no_engine_outside_its_engine_folders() -> None:
    """On the export side too an engine is its folder (export/engines/<engine>/) plus its networks
    (export/models/): the code that reads the registry names none. Comments and docstrings may (as provenance)."""
    from export.engines import EXPORTS

    names = {part.name for part in EXPORTS if part.stages and part.name != "shared"}
    assert names == {"sadtalker", "wav2lip"}  # the registry's lines
    export = Path(__file__).resolve().parent.parent / "export"
    per_model = {"layers.py", "mel.py", "weights.py", "precision.py"}  # a network's building blocks or its study
    for path in sorted(export.glob("*.py")):
        if path.name in per_model:
            continue
        found = [word for word in _code_words(path.read_text()) if any(name in word.lower() for name in names)]
        assert found == [], path.name


def _code_words(source: str) -> list[str]:
    """The identifiers, imported modules and string constants of a module, docstrings left out."""
    import ast

    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            words += [node.module, *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Import):
            words += [alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append(node.value)
    return words
