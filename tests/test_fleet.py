"""A fleet on one machine — two embedded Tritons, two gateway processes, a Redis server (real processes, real
sockets): avatars shared between gateways, a Triton killed mid-session (the session completes with the very
frames a healthy fleet renders), a Triton restarted (it rejoins), Redis stopped (degraded, in words).

The Tritons serve the Wav2Lip engine of the reduced models (fast to start and to render on a CPU).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import decode_video, read_wav_int16
from websockets.sync.client import connect

from export.repository import RepositorySettings, write_repository
from gateway.ops.fleet import Fleet

pytestmark = [pytest.mark.triton, pytest.mark.slow]

WAV2LIP_STAGES = ("mel", "wav2lip", "wav2lip_to_uint8")
FLEET_KEY = "fleet-test-avatar-signing-key"


@pytest.fixture(scope="module")
def fleet(reduced_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    onnx = tmp_path_factory.mktemp("fleet_onnx")
    for stage in WAV2LIP_STAGES:
        for suffix in (".onnx", ".json"):
            shutil.copy(reduced_onnx_dir / f"{stage}{suffix}", onnx / f"{stage}{suffix}")
    repository = write_repository(onnx, tmp_path_factory.mktemp("fleet_repo"), RepositorySettings(intra_op_threads=1))
    env = {
        "LIPSYNC_DEMO": "1",
        "LIPSYNC_TRITON_HEALTH_INTERVAL_S": "0.5",
        "LIPSYNC_MAX_SESSIONS_PER_CLIENT": "8",
        "LIPSYNC_AVATAR_SIGNING_KEY": FLEET_KEY,
    }
    with Fleet(repository.path, tritons=2, gateways=2, env=env).start() as running:
        yield running


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav)[: 16000 * 3]


def upload(url: str, portrait: bytes) -> str:
    response = httpx.post(f"{url}/v1/avatars", content=portrait, headers={"content-type": "image/jpeg"}, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["avatar_id"])


def session(url: str, avatar_id: str, pcm: np.ndarray, on_first_fragment: threading.Event | None = None) -> dict:
    """A whole Wav2Lip clip session: its MP4 and its end message (or its error)."""
    media: list[bytes] = []
    with connect(url.replace("http://", "ws://") + "/ws/stream", open_timeout=60, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, "options": {"engine": "wav2lip"}}))
        ready = json.loads(ws.recv(timeout=60))
        if ready["type"] == "error":
            return {"error": ready}
        ws.send(pcm.astype("<i2").tobytes())
        ws.send(json.dumps({"type": "end"}))
        while True:
            message = ws.recv(timeout=300)
            if isinstance(message, bytes):
                media.append(message)
                if len(media) == 2 and on_first_fragment is not None:
                    on_first_fragment.set()
                continue
            payload = json.loads(message)
            if payload["type"] in ("end", "error"):
                return {payload["type"]: payload, "mp4": b"".join(media)}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def test_an_avatar_uploaded_on_one_gateway_streams_on_another(
    fleet: Fleet, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    a, b = fleet.gateway_urls
    avatar_id = upload(a, astronaut_jpeg)
    result = session(b, avatar_id, speech[:8000])
    assert "end" in result, result
    assert result["end"]["frames"] == 12
    assert httpx.get(f"{b}/readyz", timeout=30).json()["reason"].count("2 of 2") >= 1


def test_a_record_forged_without_the_key_is_refused_while_its_owner_keeps_serving_it(
    fleet: Fleet, speech: np.ndarray
) -> None:
    import io

    import redis
    from PIL import Image
    from skimage import data

    from gateway.avatars.shared import KEY_PREFIX, MAGIC, TAG_BYTES, sign

    a, b = fleet.gateway_urls
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=80)  # an avatar neither gateway holds
    avatar_id = upload(a, buffer.getvalue())
    client = redis.Redis.from_url(fleet.redis.url)
    try:
        record = client.get(KEY_PREFIX + avatar_id)
        assert isinstance(record, bytes) and record.startswith(MAGIC)
        # Whoever can write Redis, without the fleet's key: the same record, signed with another key.
        forged = sign(b"not-the-fleet-key-0123456789", avatar_id, record[len(MAGIC) + TAG_BYTES :])
        client.set(KEY_PREFIX + avatar_id, forged)
    finally:
        client.close()
    refused_before = metric(b, "lipsync_shared_avatar_records_refused_total", reason="signature")
    refused = session(b, avatar_id, speech[:8000])
    assert refused["error"]["code"] == "unknown_avatar", refused
    assert metric(b, "lipsync_shared_avatar_records_refused_total", reason="signature") == refused_before + 1
    assert "end" in session(a, avatar_id, speech[:8000])  # the owner serves its own copy


def test_a_triton_killed_mid_session_changes_nothing_of_its_frames(
    fleet: Fleet, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    a, _ = fleet.gateway_urls
    avatar_id = upload(a, astronaut_jpeg)
    healthy = session(a, avatar_id, speech)
    assert "end" in healthy, healthy

    first_fragment = threading.Event()
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(session(a, avatar_id, speech, first_fragment)))
    runner.start()
    assert first_fragment.wait(timeout=120)
    port = fleet.kill_triton(0)  # while the session's other chunks are being rendered
    runner.join(timeout=300)
    assert "end" in outcome, outcome
    assert outcome["end"]["frames"] == healthy["end"]["frames"] == speech.size // 640
    killed_frames, healthy_frames = decode_video(outcome["mp4"])[0], decode_video(healthy["mp4"])[0]
    for have, want in zip(killed_frames, healthy_frames, strict=True):
        np.testing.assert_array_equal(have, want)

    # The dead endpoint was taken out; restarted on its address, it is taken back in.
    dead = f"127.0.0.1:{port}"
    assert metric(a, "lipsync_triton_endpoint_healthy", endpoint=dead) == 0
    fleet.restart_triton(0, port)
    deadline = time.monotonic() + 60
    while metric(a, "lipsync_triton_endpoint_healthy", endpoint=dead) != 1 and time.monotonic() < deadline:
        time.sleep(0.25)  # the gateway's health check runs every 0.5 s here
    assert metric(a, "lipsync_triton_endpoint_healthy", endpoint=dead) == 1
    calls_before = metric(a, "lipsync_triton_endpoint_calls_total", endpoint=dead, outcome="ok")
    for _ in range(2):  # new work goes to it again
        assert "end" in session(a, avatar_id, speech[:16000])
    assert metric(a, "lipsync_triton_endpoint_calls_total", endpoint=dead, outcome="ok") > calls_before


def test_a_call_whose_triton_went_away_is_retried_once_on_another(fleet: Fleet) -> None:
    """The retry itself, made certain: a call that picks the dead endpoint first gets its answer elsewhere."""
    import asyncio

    from gateway.metrics import Metrics
    from gateway.triton.client import TritonClient

    async def call() -> tuple[np.ndarray, Metrics]:
        metrics = Metrics()
        client = TritonClient(fleet.triton_url, timeout_s=60, metrics=metrics)  # no health checks running
        try:
            signal = np.zeros((1, 800 + 200 * 19), np.float32)
            return (await client.infer("mel", {"signal": signal}, ["mel"]))["mel"], metrics
        finally:
            await client.close()

    first = fleet.triton_servers[0].grpc_url  # both idle: the first endpoint is picked first
    port = fleet.kill_triton(0)
    try:
        mel, metrics = asyncio.run(call())
    finally:
        fleet.restart_triton(0, port)
    assert mel.shape == (1, 20, 80)
    registry = metrics.registry
    assert registry.get_sample_value("lipsync_triton_endpoint_calls_total", {"endpoint": first, "outcome": "gone"}) == 1
    assert registry.get_sample_value("lipsync_triton_retries_total") == 1


def test_without_redis_a_gateway_keeps_its_avatars_and_says_why_it_lacks_others(
    fleet: Fleet, speech: np.ndarray
) -> None:
    import io

    from PIL import Image
    from skimage import data

    a, b = fleet.gateway_urls
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.astronaut()[:, ::-1])).save(buffer, format="JPEG")
    mirrored = buffer.getvalue()
    fleet.redis.stop()
    try:
        avatar_id = upload(a, mirrored)  # made from the upload; sharing it fails quietly
        assert "end" in session(a, avatar_id, speech[:8000])
        refused = session(b, avatar_id, speech[:8000])
        assert refused["error"]["code"] == "unknown_avatar"
        assert "shared avatar store is unreachable" in refused["error"]["message"]
    finally:
        fleet.redis.start()
    with urllib.request.urlopen(f"{b}/healthz", timeout=10) as response:
        assert response.status == 200  # the gateway never went down
