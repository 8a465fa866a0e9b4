"""The generated cpu repository on the real embedded Triton: readiness, ensembles vs PyTorch, batching, errors.

The reduced models (seeded random weights) are exported once per session (``reduced_onnx_dir``); the reference
is the same modules run offline in PyTorch, with the gateway's own image helpers for the enhancer path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from export.engines import ENSEMBLES
from export.engines.sadtalker.steps import FaceToUint8
from export.onnx import relative_error
from export.repository import RepositorySettings, WrittenRepository, write_repository
from export.stages import StageFactory
from gateway.media.pasteback import from_enhancer, to_enhancer
from gateway.triton.server import EmbeddedTriton, process_group_members
from lipsync.audio import mel_window_indices, num_video_frames, padded_signal
from lipsync.wav2lip import face_input, wav2lip_mel_windows

LOG = logging.getLogger(__name__)
pytestmark = pytest.mark.triton

FLOAT_TOLERANCE = 1e-4
# A long batching window makes merging certain in the batching test; it costs each per-frame step ≤ 20 ms.
SETTINGS = RepositorySettings(target="cpu", max_queue_delay_us=20_000, intra_op_threads=1)


@pytest.fixture(scope="module")
def repository(reduced_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WrittenRepository:
    return write_repository(reduced_onnx_dir, tmp_path_factory.mktemp("repo_cpu"), SETTINGS)


@pytest.fixture(scope="module")
def server(repository: WrittenRepository) -> Iterator[EmbeddedTriton]:
    started = time.perf_counter()
    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as running:
        LOG.info(
            "embedded Triton with %d models ready in %.1f s", len(repository.models), time.perf_counter() - started
        )
        yield running


@pytest.fixture
def client(server: EmbeddedTriton) -> Iterator[grpcclient.InferenceServerClient]:
    connection = grpcclient.InferenceServerClient(server.grpc_url)
    yield connection
    connection.close()


def infer(
    client: grpcclient.InferenceServerClient, model: str, inputs: dict[str, np.ndarray], outputs: list[str]
) -> dict[str, np.ndarray]:
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        tensors.append(tensor)
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def torch_run(factory: StageFactory, stage: str, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = factory.build(stage)(*(torch.from_numpy(x) for x in inputs))
    return out.numpy()


def render_inputs(frames: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "window": rng.normal(size=(frames, 70, 27)).astype(np.float32),
        "kp_canonical": (0.3 * rng.normal(size=(frames, 15, 3))).astype(np.float32),
        "source_image": rng.random((frames, 3, 256, 256), dtype=np.float32),
        "kp_source": (0.3 * rng.normal(size=(frames, 15, 3))).astype(np.float32),
    }


@pytest.fixture(scope="module")
def render_case(reduced_factory: StageFactory) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Render inputs for two frames and PyTorch's generator output for them (computed once: it is the slow part)."""
    x = render_inputs(frames=2, seed=3)
    kp_driving = torch_run(reduced_factory, "mapping", x["window"], x["kp_canonical"])
    return x, torch_run(reduced_factory, "generator", x["source_image"], x["kp_source"], kp_driving)


def assert_faces_close(have: np.ndarray, want: np.ndarray) -> None:
    assert have.dtype == np.uint8 and have.shape == want.shape
    difference = np.abs(have.astype(np.int16) - want.astype(np.int16))
    assert difference.max() <= 1, f"{int((difference > 1).sum())} values differ by more than one level"
    # Off-by-one only where float noise straddles a rounding boundary.
    assert (difference == 0).mean() > 0.99


def test_every_model_and_ensemble_is_ready_after_warmup(
    client: grpcclient.InferenceServerClient, repository: WrittenRepository
) -> None:
    index = {model.name: model.state for model in client.get_model_repository_index().models}
    expected = {*repository.models, *repository.ensembles}
    assert set(ENSEMBLES) <= expected and "audio2pose" in expected
    assert index == dict.fromkeys(expected, "READY")
    for name in repository.models:
        # Triton ran this warmup request before it reported the model ready.
        warmup = client.get_model_config(name, as_json=True)["config"]["model_warmup"]
        assert [w["name"] for w in warmup] == [f"{name}_warmup"]


def test_avatar_equals_pytorch(client: grpcclient.InferenceServerClient, reduced_factory: StageFactory) -> None:
    rng = np.random.default_rng(1)
    crop = rng.random((2, 3, 256, 256), dtype=np.float32)
    aligned = rng.random((2, 3, 224, 224), dtype=np.float32)
    got = infer(client, "avatar", {"crop": crop, "aligned": aligned}, ["coeffs", "kp_canonical"])
    assert relative_error(got["coeffs"], torch_run(reduced_factory, "face_recon", aligned)) < FLOAT_TOLERANCE
    assert relative_error(got["kp_canonical"], torch_run(reduced_factory, "kp_detector", crop)) < FLOAT_TOLERANCE


def motion_inputs(seconds: float, seed: int) -> dict[str, np.ndarray]:
    """A whole clip as one span: the padded signal, and every frame's window indices into its mel."""
    rng = np.random.default_rng(seed)
    wav = (0.3 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32)
    signal = padded_signal(wav)[None]
    frames = num_video_frames(wav.shape[0])
    mel_frames = (signal.shape[1] - 800) // 200 + 1
    return {
        "signal": signal,
        "mel_index": mel_window_indices(frames, mel_frames),
        "ref_exp": rng.normal(size=(frames, 64)).astype(np.float32),
        "ratio": rng.random((frames, 1), dtype=np.float32),
    }


def test_motion_equals_pytorch(client: grpcclient.InferenceServerClient, reduced_factory: StageFactory) -> None:
    x = motion_inputs(seconds=0.6, seed=2)  # 15 frames from one signal of batch 1
    got = infer(client, "motion", x, ["exp"])["exp"]

    mel = torch_run(reduced_factory, "mel", x["signal"])[0]  # (T, 80)
    windows = np.ascontiguousarray(mel[x["mel_index"]].transpose(0, 2, 1)[:, None])  # (K, 1, 80, 16)
    want = torch_run(reduced_factory, "audio2exp", windows, x["ref_exp"], x["ratio"])
    assert got.shape == (15, 64)
    assert relative_error(got, want) < FLOAT_TOLERANCE


def faces_uint8(prediction: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return FaceToUint8()(torch.from_numpy(prediction)).numpy()


def test_render_equals_pytorch(
    client: grpcclient.InferenceServerClient, render_case: tuple[dict[str, np.ndarray], np.ndarray]
) -> None:
    x, prediction = render_case
    got = infer(client, "render", x, ["face"])["face"]
    assert got.shape == (2, 256, 256, 3)
    assert_faces_close(got, faces_uint8(prediction))


def test_render_enhanced_equals_the_gateway_enhancer_path(
    client: grpcclient.InferenceServerClient,
    reduced_factory: StageFactory,
    render_case: tuple[dict[str, np.ndarray], np.ndarray],
) -> None:
    """uint8 face → to_enhancer (OpenCV resize) → GFPGAN → from_enhancer, as the gateway would do it by hand."""
    x, prediction = render_case
    got = infer(client, "render_enhanced", x, ["face"])["face"]
    restored = torch_run(reduced_factory, "gfpgan", to_enhancer(faces_uint8(prediction)))
    assert got.shape == (2, 512, 512, 3)
    assert_faces_close(got, from_enhancer(restored, 512))


@pytest.fixture(scope="module")
def wav2lip_case(reduced_factory: StageFactory) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of the Wav2Lip ensembles for 7 frames of a 0.3 s clip (tail windows included), and PyTorch's
    network output for them."""
    rng = np.random.default_rng(5)
    wav = (0.3 * rng.standard_normal(4800)).astype(np.float32)
    frames = num_video_frames(wav.shape[0])
    mel = torch_run(reduced_factory, "mel", padded_signal(wav)[None])[0]
    faces_bgr = rng.integers(0, 256, size=(frames, 96, 96, 3), dtype=np.uint8)
    x = {"mel_window": wav2lip_mel_windows(mel, frames), "face_input": face_input(faces_bgr)}
    return x, torch_run(reduced_factory, "wav2lip", x["mel_window"], x["face_input"])


def test_wav2lip_render_equals_upstreams_conversion(
    client: grpcclient.InferenceServerClient, wav2lip_case: tuple[dict[str, np.ndarray], np.ndarray]
) -> None:
    x, prediction = wav2lip_case
    got = infer(client, "wav2lip_render", x, ["face"])["face"]
    # Upstream: (pred.transpose(0, 2, 3, 1) * 255).astype(np.uint8), BGR; we answer RGB.
    upstream_bgr = (prediction.transpose(0, 2, 3, 1).astype(np.float64) * 255.0).astype(np.uint8)
    assert got.shape == (7, 96, 96, 3)
    assert_faces_close(got, np.ascontiguousarray(upstream_bgr[..., ::-1]))


def test_wav2lip_render_enhanced_runs_gfpgan_on_the_enlarged_face(
    client: grpcclient.InferenceServerClient,
    reduced_factory: StageFactory,
    wav2lip_case: tuple[dict[str, np.ndarray], np.ndarray],
) -> None:
    x, prediction = wav2lip_case
    got = infer(client, "wav2lip_render_enhanced", x, ["face"])["face"]
    face = (prediction.transpose(0, 2, 3, 1).astype(np.float64) * 255.0).astype(np.uint8)[..., ::-1]
    enlarged = np.stack([cv2.resize(np.ascontiguousarray(f, np.float32), (512, 512)) for f in face])
    gfpgan_input = np.ascontiguousarray(((enlarged / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2), np.float32)
    restored = torch_run(reduced_factory, "gfpgan", gfpgan_input)
    assert got.shape == (7, 512, 512, 3)
    assert_faces_close(got, from_enhancer(restored, 512))


def inference_counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_dynamic_batcher_merges_concurrent_clients(
    server: EmbeddedTriton, client: grpcclient.InferenceServerClient, reduced_factory: StageFactory
) -> None:
    clients, requests_each = 6, 3
    rng = np.random.default_rng(5)
    feeds = [
        {
            "window": rng.normal(size=(1, 70, 27)).astype(np.float32),
            "kp_canonical": (0.3 * rng.normal(size=(1, 15, 3))).astype(np.float32),
        }
        for _ in range(clients * requests_each)
    ]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def session(number: int) -> None:
        connection = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            start.wait()
            for i in range(number * requests_each, (number + 1) * requests_each):
                results[i] = infer(connection, "mapping", feeds[i], ["kp_driving"])["kp_driving"]
        except BaseException as error:  # reported below; a thread must not die silently
            errors.append(error)
        finally:
            connection.close()

    inferences_before, executions_before = inference_counts(client, "mapping")
    threads = [threading.Thread(target=session, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    inferences, executions = inference_counts(client, "mapping")
    inferences -= inferences_before
    executions -= executions_before
    LOG.info("mapping: %d inferences in %d executions", inferences, executions)
    assert inferences == clients * requests_each
    assert executions < inferences
    # Merged or not, every client got its own rows back.
    for i, feed in enumerate(feeds):
        want = torch_run(reduced_factory, "mapping", feed["window"], feed["kp_canonical"])
        assert relative_error(results[i], want) < FLOAT_TOLERANCE


AUDIO2EXP_ROW = {"mel": (1, 80, 16), "ref_exp": (64,), "ratio": (1,)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"ref_exp": np.zeros((3, 63), np.float32)}, "ref_exp", id="wrong-shape"),
        pytest.param({"ratio": np.zeros((3, 1), np.float64)}, "ratio", id="wrong-dtype"),
        pytest.param({"ratio": None}, "ratio", id="missing-input"),
        pytest.param(
            {name: np.zeros((40, *shape), np.float32) for name, shape in AUDIO2EXP_ROW.items()},
            "batch-size must be <= 32",
            id="batch-over-max",
        ),
        pytest.param({"mel": np.zeros((2, 1, 80, 16), np.float32)}, "batch size does not match", id="ragged-batch"),
    ],
)
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(
    client: grpcclient.InferenceServerClient, change: dict[str, np.ndarray | None], message: str
) -> None:
    rng = np.random.default_rng(6)
    good = {
        "mel": rng.normal(size=(3, 1, 80, 16)).astype(np.float32),
        "ref_exp": rng.normal(size=(3, 64)).astype(np.float32),
        "ratio": rng.random((3, 1), dtype=np.float32),
    }
    bad = {name: array for name, array in {**good, **change}.items() if array is not None}
    with pytest.raises(InferenceServerException) as failure:
        infer(client, "audio2exp", bad, ["exp"])
    LOG.info("rejected: %s", failure.value.message())
    assert message in failure.value.message() and "audio2exp" in failure.value.message()
    assert infer(client, "audio2exp", good, ["exp"])["exp"].shape == (3, 64)


def test_graph_error_inside_an_ensemble_names_the_step_and_spares_other_requests(
    client: grpcclient.InferenceServerClient,
) -> None:
    good = motion_inputs(seconds=0.3, seed=7)
    bad = {**good, "mel_index": good["mel_index"] + 1000}  # beyond the span's mel frames
    with pytest.raises(InferenceServerException) as failure:
        infer(client, "motion", bad, ["exp"])
    assert "mel_windows: inference failed" in failure.value.message()
    assert "index [7, 16]" in failure.value.message()
    assert infer(client, "motion", good, ["exp"])["exp"].shape == (7, 64)


def test_stopped_launcher_leaves_no_process(repository: WrittenRepository) -> None:
    server = EmbeddedTriton().start(
        repository.path, model_control_mode="explicit", load_models=["face_to_uint8"], auto_complete_config=False
    )
    group = server.pid
    assert len(process_group_members(group)) >= 2  # the server and the model's stub
    server.stop()
    assert process_group_members(group) == []


# ------------------------------------------------------------------------------ bounded queues (busy, not gone)


def test_triton_loads_each_batched_models_queue_bound(client: grpcclient.InferenceServerClient) -> None:
    """The default repository's queue policies, as the real Triton parsed them: bounded, refusing at once."""
    from export.engines import STAGES
    from export.repository import queue_size

    for name in ("audio2exp", "mapping", "generator", "wav2lip_to_uint8"):
        batching = client.get_model_config(name, as_json=True)["config"]["dynamic_batching"]
        policy = batching["default_queue_policy"]
        assert int(policy["max_queue_size"]) == queue_size(STAGES[name], SETTINGS) >= 96, name
        assert policy.get("timeout_action", "REJECT") == "REJECT", name  # JSON leaves out the default (0)


# The Wav2Lip render path of the reduced models: two small graphs, exported and served in a few seconds.
QUEUE_STAGES = ("wav2lip", "wav2lip_to_uint8")


@pytest.fixture(scope="module")
def one_place_queues(reduced_factory: StageFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded Triton serving wav2lip_render whose batched models queue at most one request: its gRPC url.

    The batcher holds a request up to 50 ms for company, so concurrent requests find its one place taken."""
    from export.onnx import export_and_check

    onnx = tmp_path_factory.mktemp("queue_onnx")
    for stage in QUEUE_STAGES:
        export_and_check(
            stage,
            reduced_factory.build(stage),
            onnx,
            grid_sample=reduced_factory.variant.grid_sample,
            provenance=reduced_factory.variant.describe(),
            check=False,
        )
    settings = RepositorySettings(target="cpu", max_queue_size=1, max_queue_delay_us=50_000, intra_op_threads=1)
    repository = write_repository(onnx, tmp_path_factory.mktemp("queue_repo"), settings)
    assert repository.ensembles == ("wav2lip_render",)
    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as running:
        yield running.grpc_url


def test_a_full_triton_queue_is_answered_busy_and_never_retried_elsewhere(one_place_queues: str) -> None:
    """Triton refuses what its queue cannot hold (gRPC UNAVAILABLE, like a server that went away); the gateway
    reports it as `busy`, keeps the endpoint healthy and does not pass the call on to another endpoint."""
    import asyncio

    from gateway.errors import CLOSE_CODES, HTTP_STATUS, InferenceBusy
    from gateway.metrics import Metrics
    from gateway.triton.client import TritonClient

    host, _, port = one_place_queues.rpartition(":")
    assert host == "127.0.0.1"
    # Two endpoints, one server: a refusal taken for a vanished server would be retried on the other.
    url = f"127.0.0.1:{port},localhost:{port}"
    rng = np.random.default_rng(8)
    feed = {
        "mel_window": rng.normal(size=(2, 1, 80, 16)).astype(np.float32),
        "face_input": rng.random((2, 6, 96, 96), dtype=np.float32),
    }

    async def flood(calls: int) -> tuple[list[BaseException | None], TritonClient, Metrics]:
        metrics = Metrics()
        triton = TritonClient(url, timeout_s=60, metrics=metrics)  # no health checks running

        async def one() -> BaseException | None:
            try:
                answer = await triton.infer("wav2lip_render", feed, ["face"])
            except Exception as error:  # every outcome is checked below
                return error
            assert answer["face"].shape == (2, 96, 96, 3)
            return None

        try:
            return list(await asyncio.gather(*(one() for _ in range(calls)))), triton, metrics
        finally:
            await triton.close()

    outcomes, triton, metrics = asyncio.run(flood(24))
    refused = [error for error in outcomes if error is not None]
    LOG.info("%d of %d calls refused: %s", len(refused), len(outcomes), refused[:1])
    assert refused and len(refused) < len(outcomes)
    assert all(isinstance(error, InferenceBusy) for error in refused), refused
    error = refused[0]
    assert isinstance(error, InferenceBusy) and error.code == "busy"
    assert error.message == (
        "The inference server is at capacity (its queue for 'wav2lip_render' is full); try again in a moment."
    )
    assert "Exceeds maximum queue size" in str(error.__cause__)
    assert (HTTP_STATUS[error.code], CLOSE_CODES[error.code]) == (503, 4503)
    assert all(endpoint.healthy for endpoint in triton.endpoints)
    registry = metrics.registry
    assert registry.get_sample_value("lipsync_triton_retries_total") == 0
    for endpoint in triton.endpoints:
        assert registry.get_sample_value(
            "lipsync_triton_endpoint_calls_total", {"endpoint": endpoint.url, "outcome": "gone"}
        ) in (None, 0)
    busy = sum(
        registry.get_sample_value("lipsync_triton_endpoint_calls_total", {"endpoint": endpoint.url, "outcome": "busy"})
        or 0
        for endpoint in triton.endpoints
    )
    assert busy == len(refused)


def test_a_caller_that_stops_waiting_abandons_its_call_and_never_cancels_it(
    client: grpcclient.InferenceServerClient, server: EmbeddedTriton
) -> None:
    """An interrupt or a vanished session stops waiting for its renders; the gateway must not cancel their gRPC
    calls (Triton 2.51 can crash on a cancellation racing an answer), so the server finishes each one."""
    import asyncio

    from gateway.metrics import Metrics
    from gateway.triton.client import TritonClient

    def successes() -> tuple[int, int]:
        stats = client.get_inference_statistics("wav2lip_render", as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats.get("success", {}).get("count", 0)), int(stats.get("fail", {}).get("count", 0))

    rng = np.random.default_rng(11)
    feed = {
        "mel_window": rng.normal(size=(8, 1, 80, 16)).astype(np.float32),
        "face_input": rng.random((8, 6, 96, 96), dtype=np.float32),
    }
    before = successes()

    async def abandon() -> int:
        triton = TritonClient(server.grpc_url, timeout_s=60, metrics=Metrics())
        (endpoint,) = triton.endpoints
        caller = asyncio.create_task(triton.infer("wav2lip_render", feed, ["face"]))
        while endpoint.in_flight == 0:  # the call is out
            await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        abandoned = len(endpoint.abandoned)
        await triton.close()  # waits for the abandoned call to end before closing the channel
        assert not endpoint.abandoned
        return abandoned

    assert asyncio.run(abandon()) == 1
    succeeded, failed = successes()
    assert (succeeded - before[0], failed - before[1]) == (1, 0)
