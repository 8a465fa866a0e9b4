"""The compatible protocol (``/ws/lipsync``) with its own engine, Wav2Lip: every field does what it says.

Real gateway and embedded Triton (reduced models, random weights: the faces are noise, which makes the pasted
region easy to see against the untouched photo).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from gateway_helpers import read_wav_int16, wav_bytes
from PIL import Image
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTriton) -> Iterator[TestClient]:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav)[: 16000 + 555]  # 1 s and a bit: 25 frames


def ask(client: TestClient, request: dict[str, Any]) -> dict[str, Any]:
    with client.websocket_connect("/ws/lipsync") as ws:
        ws.send_text(json.dumps(request))
        answer: dict[str, Any] = ws.receive_json()
    return answer


def request_for(portrait: bytes, pcm: np.ndarray, **fields: Any) -> dict[str, Any]:
    """A request written from the protocol's description: base64 WAV and image, and the Wav2Lip fields."""
    return {
        "audio": base64.b64encode(wav_bytes(pcm)).decode(),
        "image": base64.b64encode(portrait).decode(),
        **fields,
    }


def video_of(answer: dict[str, Any]) -> tuple[list[np.ndarray], float]:
    """The frames (RGB) and the audio's duration of the answer's MP4, decoded with FFmpeg (PyAV)."""
    assert answer["status"] == "success", answer
    data = base64.b64decode(answer["video"])
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(data)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    return frames, samples / rate


def changed_rows(frames: list[np.ndarray], original: np.ndarray) -> np.ndarray:
    """Rows where the video differs visibly from the photo: over 20 pixels more than 30 levels off (on the mean
    of the frames) — a pasted face does, H.264's own error on the untouched photo (1–2 pixels a row) does not."""
    difference = np.mean([np.abs(f.astype(np.float32) - original).max(axis=2) for f in frames], axis=0)
    return np.flatnonzero((difference > 30).sum(axis=1) > 20)


def inference_requests(triton: EmbeddedTriton, model: str) -> int:
    connection = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        stats = connection.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        connection.close()
    return int(stats["inference_stats"].get("success", {}).get("count", 0))


def test_a_client_written_from_the_description_gets_a_playable_mp4(
    client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    request = request_for(
        astronaut_jpeg,
        speech,
        fps=25,
        pads=[0, 10, 0, 0],
        img_size=96,
        batch_size=16,
        no_segmentation=False,
        no_sr=True,
    )
    frames, audio_seconds = video_of(ask(client, request))
    assert len(frames) == speech.size // 640 == 25
    assert frames[0].shape == (512, 512, 3)
    assert abs(audio_seconds - speech.size / 16000) <= 1024 / 16000


def test_pads_move_the_pasted_box(client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray) -> None:
    original = np.asarray(Image.open(io.BytesIO(astronaut_jpeg)).convert("RGB"), np.float32)
    bottoms = {}
    for bottom in (10, 70):
        answer = ask(client, request_for(astronaut_jpeg, speech[:6400], pads=[0, bottom, 0, 0], no_segmentation=True))
        rows = changed_rows(video_of(answer)[0], original)
        assert rows.size > 20, "the box should change visibly (random weights)"
        bottoms[bottom] = int(rows.max())
    assert bottoms[70] >= bottoms[10] + 30, bottoms


def test_segmentation_blends_only_the_lower_face(client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray) -> None:
    original = np.asarray(Image.open(io.BytesIO(astronaut_jpeg)).convert("RGB"), np.float32)
    tops = {}
    for no_segmentation in (True, False):
        answer = ask(client, request_for(astronaut_jpeg, speech[:6400], no_segmentation=no_segmentation))
        tops[no_segmentation] = int(changed_rows(video_of(answer)[0], original).min())
    # The box starts above the brows; the lower-face mask below the nose.
    assert tops[False] >= tops[True] + 30, tops


def test_no_sr_false_runs_gfpgan_and_batch_size_sets_the_requests(
    client: TestClient, triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    gfpgan, plain = (inference_requests(triton_server, m) for m in ("gfpgan", "wav2lip_render"))
    frames, _ = video_of(ask(client, request_for(astronaut_jpeg, speech, no_sr=False, batch_size=10)))
    assert len(frames) == 25
    # 25 frames in requests of at most 10 frames: 3 requests through the enhanced ensemble, GFPGAN in each.
    assert inference_requests(triton_server, "gfpgan") - gfpgan >= 3
    assert inference_requests(triton_server, "wav2lip_render") == plain  # the plain path was not used
    before = inference_requests(triton_server, "wav2lip_render")
    video_of(ask(client, request_for(astronaut_jpeg, speech, batch_size=7)))
    assert inference_requests(triton_server, "wav2lip_render") - before == math.ceil(25 / 7)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"fps": 30}, "fps must be 25"),
        ({"img_size": 128}, "img_size must be 96"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 129}, "batch_size"),
        ({"pads": [0, 10, 0]}, "pads"),
        ({"pads": [0, -5, 0, 0]}, "pads"),
        ({"engine": "dalle"}, "engine"),
    ],
)
def test_bad_fields_are_refused_in_words(
    client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray, fields: dict[str, Any], words: str
) -> None:
    answer = ask(client, request_for(astronaut_jpeg, speech[:3200], **fields))
    assert answer["status"] == "error" and words in answer["message"], answer


def test_engine_sadtalker_keeps_the_old_behaviour(
    client: TestClient, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    before = inference_requests_of(client)
    frames, _ = video_of(ask(client, request_for(astronaut_jpeg, speech[:6400], engine="sadtalker")))
    assert len(frames) == 10
    assert inference_requests_of(client) > before


def inference_requests_of(client: TestClient) -> float:
    """Render calls the gateway made to SadTalker's ensemble (its own Prometheus histogram's count)."""
    metrics = client.get("/metrics").text
    line = next(
        (m for m in metrics.splitlines() if m.startswith('lipsync_triton_call_seconds_count{model="render"}')), ""
    )
    return float(line.split()[-1]) if line else 0.0
