"""Streaming is seamless and matches the offline reference; sessions stay apart; Triton outages are survived.

All against the real embedded Triton serving the reduced models (random weights).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gateway_helpers import decode_video, read_wav_int16, run_fed_in_pieces, stream
from PIL import Image
from skimage import data
from starlette.testclient import TestClient

from export.engines.sadtalker.reference import AvatarInputs, Options, ReferencePipeline
from export.engines.wav2lip.reference import Wav2LipReference
from export.quantize import INT8_TOLERANCE, quantize_stage, variation_error
from export.repository import RepositorySettings, write_repository
from export.stages import StageFactory
from gateway.app import create_app
from gateway.avatars.portrait import AvatarLimits
from gateway.avatars.store import AvatarState, AvatarStore
from gateway.engines import engines, session_options
from gateway.engines.sadtalker.crop import prepare_avatar
from gateway.engines.sadtalker.engine import SadTalkerAvatar
from gateway.engines.wav2lip.face import Wav2LipAvatar
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.metrics import Metrics
from gateway.session.core import StreamSession
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.settings import Settings
from gateway.triton.client import TritonClient
from gateway.triton.server import EmbeddedTriton

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def speech(spoken_wav: Path) -> np.ndarray:
    return read_wav_int16(spoken_wav)[: 16000 * 3 // 2 + 321]  # 37 frames and a tail


async def _avatar(url: str, portrait: bytes) -> AvatarState:
    """The portrait's avatar record with every engine's part prepared."""
    triton = TritonClient(url, timeout_s=60, metrics=Metrics())
    try:
        avatar = await AvatarStore(AvatarLimits(), capacity_bytes=2**30).add(portrait)
        for engine in engines().values():
            await engine.prepare(avatar, triton)
        return avatar
    finally:
        await triton.close()


async def _served_faces(url: str, avatar: AvatarState, pcm: np.ndarray, options: SessionOptions) -> np.ndarray:
    """The faces of one streamed session, before paste-back and encoding, with audio arriving in pieces."""
    triton = TritonClient(url, timeout_s=120, metrics=Metrics())
    faces: dict[int, np.ndarray] = {}

    def observe(request: RenderRequest, chunk: np.ndarray) -> None:
        for frame, face in zip(request.frames, chunk, strict=True):
            faces[frame] = face

    session = StreamSession(avatar, options, engines()[options.engine], triton, Metrics(), observe=observe)
    try:
        await run_fed_in_pieces(session, pcm)
    finally:
        await triton.close()
    return np.stack([faces[i] for i in range(len(faces))])


@pytest.mark.parametrize("pose", ["still", "audio"])
def test_chunk_sizes_give_identical_frames_equal_to_the_offline_reference(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, astronaut_jpeg: bytes, speech: np.ndarray, pose: str
) -> None:
    avatar = asyncio.run(_avatar(triton_server.grpc_url, astronaut_jpeg))
    served = {
        k: asyncio.run(
            _served_faces(
                triton_server.grpc_url,
                avatar,
                speech,
                session_options(pose=pose, seed=7, pose_style=5, chunk_frames=k),  # type: ignore[arg-type]
            )
        )
        for k in (4, 8, 16)
    }
    assert served[8].shape == (speech.size // 640, 256, 256, 3)
    np.testing.assert_array_equal(served[4], served[8])
    np.testing.assert_array_equal(served[16], served[8])

    # The offline PyTorch pipeline on the same portrait crop, with face_recon's coefficients from PyTorch too.
    portrait = prepare_avatar(astronaut_jpeg)
    # The record was made without SadTalker's part (as when it was not served), so its crop came from the
    # portrait framing: the same pixels, as the photo fits the framing.
    np.testing.assert_array_equal(avatar.part("sadtalker", SadTalkerAvatar).crop.crop, portrait.crop)
    aligned_face = portrait.aligned
    aligned = torch.from_numpy(aligned_face.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.no_grad():
        coeffs = reduced_factory.build("face_recon")(aligned)[0].numpy()
    reference = ReferencePipeline(reduced_factory).render(
        AvatarInputs(crop=np.array(portrait.crop), coeffs=coeffs),
        speech.astype(np.float32) / 32768.0,
        options=Options(pose=pose, seed=7, pose_style=5),  # type: ignore[arg-type]
    )
    difference = np.abs(served[8].astype(np.int16) - reference.astype(np.int16))
    # fp32 ONNX Runtime vs PyTorch (and mel spans vs the whole clip): within a level of rounding.
    assert difference.max() <= 2, difference.max()
    assert (difference == 0).mean() > 0.98


def test_wav2lip_chunk_sizes_give_identical_frames_equal_to_the_offline_reference(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    avatar = asyncio.run(_avatar(triton_server.grpc_url, astronaut_jpeg))
    served = {
        k: asyncio.run(
            _served_faces(triton_server.grpc_url, avatar, speech, session_options(engine="wav2lip", chunk_frames=k))
        )
        for k in (4, 8, 16)
    }
    assert served[8].shape == (speech.size // 640, 96, 96, 3)
    np.testing.assert_array_equal(served[4], served[8])
    np.testing.assert_array_equal(served[16], served[8])

    # The offline PyTorch pipeline on the same face input, with the whole clip's mel (tail windows included).
    face = avatar.part("wav2lip", Wav2LipAvatar).face(avatar, Wav2LipOptions())
    reference = Wav2LipReference(reduced_factory).render(face.face_input, speech.astype(np.float32) / 32768.0)
    difference = np.abs(served[8].astype(np.int16) - reference.astype(np.int16))
    # fp32 ONNX Runtime vs PyTorch, then truncation to uint8: a value may land one level lower or higher.
    assert difference.max() <= 1, difference.max()
    assert (difference == 0).mean() > 0.98


def test_wav2lip_in_openvino_int8_gives_identical_frames_across_chunk_sizes(
    triton_server: EmbeddedTriton, reduced_onnx_dir: Path, astronaut_jpeg: bytes, speech: np.ndarray, tmp_path: Path
) -> None:
    """The live CPU configuration (LIPSYNC_INT8_MODELS=wav2lip + LIPSYNC_OPENVINO_MODELS=wav2lip): the batcher merges
    chunks of any size, and OpenVINO's int8 kernels must not make a frame depend on that."""
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    for stage in ("mel", "wav2lip", "wav2lip_to_uint8"):
        for suffix in (".onnx", ".json"):
            shutil.copy(reduced_onnx_dir / f"{stage}{suffix}", onnx / f"{stage}{suffix}")
    quantize_stage(onnx, "wav2lip")
    settings = RepositorySettings(int8_models=("wav2lip",), openvino_models=("wav2lip",), intra_op_threads=1)
    repository = write_repository(onnx, tmp_path / "repo", settings)

    async def wav2lip_avatar(url: str) -> AvatarState:
        triton = TritonClient(url, timeout_s=60, metrics=Metrics())
        try:
            avatar = await AvatarStore(AvatarLimits(), capacity_bytes=2**30).add(astronaut_jpeg)
            await engines()["wav2lip"].prepare(avatar, triton)
            return avatar
        finally:
            await triton.close()

    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as running:
        avatar = asyncio.run(wav2lip_avatar(running.grpc_url))
        served = {
            k: asyncio.run(
                _served_faces(running.grpc_url, avatar, speech, session_options(engine="wav2lip", chunk_frames=k))
            )
            for k in (4, 8, 16)
        }
    np.testing.assert_array_equal(served[4], served[8])
    np.testing.assert_array_equal(served[16], served[8])
    fp32 = asyncio.run(
        _served_faces(triton_server.grpc_url, avatar, speech, session_options(engine="wav2lip", chunk_frames=8))
    )
    assert served[8].shape == fp32.shape
    assert variation_error(served[8].astype(np.float32), fp32.astype(np.float32)) <= INT8_TOLERANCE


def _mirrored_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.astronaut()[:, ::-1])).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_concurrent_sessions_each_get_their_own_face(
    triton_server: EmbeddedTriton, astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        portraits = {"plain": astronaut_jpeg, "mirrored": _mirrored_jpeg()}
        ids = {
            name: client.post("/v1/avatars", files={"image": ("p.jpg", jpeg, "image/jpeg")}).json()
            for name, jpeg in portraits.items()
        }
        assert ids["plain"]["avatar_id"] != ids["mirrored"]["avatar_id"]
        results: dict[str, np.ndarray] = {}

        def run(name: str) -> None:
            result = stream(client, ids[name]["avatar_id"], speech[:16000], piece=4000)
            results[name] = decode_video(result.mp4)[0][10].astype(np.float32)

        threads = [threading.Thread(target=run, args=(name,)) for name in portraits]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        originals = {
            name: np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
            for name, jpeg in portraits.items()
        }
        for name in portraits:
            other = "mirrored" if name == "plain" else "plain"
            own_error = np.abs(results[name] - originals[name]).mean()
            other_error = np.abs(results[name] - originals[other]).mean()
            assert own_error < other_error / 3, (name, own_error, other_error)


@pytest.fixture
def own_server(reduced_onnx_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, EmbeddedTriton]]:
    """A Triton of this test's own, to kill and restart."""
    repository = write_repository(reduced_onnx_dir, tmp_path / "repository", RepositorySettings(intra_op_threads=1))
    server = EmbeddedTriton().start(repository.path, auto_complete_config=False)
    try:
        yield repository.path, server
    finally:
        server.stop()


def test_triton_down_at_start_killed_mid_session_and_back(
    own_server: tuple[Path, EmbeddedTriton], astronaut_jpeg: bytes, speech: np.ndarray
) -> None:
    repository, server = own_server
    port = server.ports.grpc
    settings = Settings(triton_url=server.grpc_url, demo=True, triton_timeout_s=30)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        avatar_id = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()[
            "avatar_id"
        ]
        with client.websocket_connect("/ws/stream") as ws:
            ws.send_text(json.dumps({"type": "start", "avatar_id": avatar_id}))
            assert ws.receive_json()["type"] == "ready"
            ws.receive_bytes()  # init segment
            server.stop()  # Triton dies while the session waits for audio
            ws.send_bytes(speech.astype("<i2").tobytes())
            ws.send_text(json.dumps({"type": "end"}))
            error = None
            while error is None:
                message = ws.receive()
                assert message["type"] != "websocket.close", "closed without an error message"
                if message.get("text"):
                    payload = json.loads(message["text"])
                    error = payload if payload["type"] == "error" else None
            assert error is not None and error["code"] == "inference_unavailable", error
            assert "inference server" in error["message"]
        # The gateway is alive and says why it is not ready; new work is refused in words.
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "unreachable" in not_ready.json()["reason"]
        refused = client.post("/v1/avatars", files={"image": ("m.jpg", _mirrored_jpeg(), "image/jpeg")})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "inference_unavailable"
        # Triton comes back on the same port: the same gateway serves again.
        with EmbeddedTriton().start(repository, grpc_port=port, auto_complete_config=False):
            # As a readiness probe would: the gRPC channel reconnects within its (1 s) backoff.
            deadline = time.monotonic() + 30
            while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.status_code == 200, ready.text
            result = stream(client, avatar_id, speech[:6400])
            assert result.end is not None and result.end["frames"] == 10


def test_gateway_started_without_triton_explains_and_stays_up(astronaut_jpeg: bytes) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port with nothing behind it
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    with TestClient(create_app(Settings(triton_url=url, triton_timeout_s=5))) as client:  # type: ignore[call-arg]
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
        refused = client.post("/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
        assert refused.status_code == 503
        assert "inference server" in refused.json()["error"]["message"]
