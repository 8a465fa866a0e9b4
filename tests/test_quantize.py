"""int8 Wav2Lip for CPU serving: the error against fp32 within stated bounds, the refusal past the tolerance, and
the repository serving the int8 graph only where asked."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from golden_data import GOLDEN_DIR

from export.__main__ import main as export_main
from export.onnx import export_and_check
from export.quantize import (
    INT8_TOLERANCE,
    calibration_from_media,
    int8_graph,
    int8_is_current,
    load_calibration,
    load_faces,
    quantize_stage,
    synthetic_inputs,
    variation_error,
)
from export.repository import RepositorySettings, write_repository
from export.stages import StageFactory, Variant

# Bounds on the int8 graph's output against fp32, ≈ 2.5× what was measured at full size with synthetic weights
# (error ≈ 0.04 of the output's variation, largest pixel error ≈ 6.5/255): they catch a regression.
FULL_SIZE_VARIATION_ERROR = 0.1
FULL_SIZE_MAX_LEVELS = 16


def _export_wav2lip(factory: StageFactory, out: Path) -> Path:
    export_and_check("wav2lip", factory.build("wav2lip"), out, grid_sample="5d", provenance={}, check=False)
    return out


def _run(graph: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["prediction"], feed)[0])


@pytest.fixture(scope="module")
def full_size(synthetic_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size Wav2Lip from a synthetic wav2lip_gan.pth (the golden rule), exported and quantized."""
    factory = StageFactory(Variant(synthetic_checkpoint("wav2lip_gan.pth").parent))
    onnx_dir = _export_wav2lip(factory, tmp_path_factory.mktemp("wav2lip_int8"))
    quantize_stage(onnx_dir, "wav2lip")
    return onnx_dir


@pytest.mark.slow
def test_full_size_int8_stays_within_its_bounds_on_upstreams_inputs_and_fresh_ones(full_size: Path) -> None:
    with np.load(GOLDEN_DIR / "wav2lip.npz") as golden:  # a real face crop and upstream's mel of real speech
        feeds = [{"mel_window": golden["mel_windows"], "face": golden["face_input"]}]
    feeds.append(synthetic_inputs("wav2lip", rows=5, seed=123))  # rows the calibration never saw
    for feed in feeds:
        want, have = _run(full_size / "wav2lip.onnx", feed), _run(int8_graph(full_size, "wav2lip"), feed)
        assert have.shape == want.shape and np.isfinite(have).all()
        assert variation_error(have, want) <= FULL_SIZE_VARIATION_ERROR
        assert np.abs(have - want).max() * 255 <= FULL_SIZE_MAX_LEVELS
    sidecar = json.loads(int8_graph(full_size, "wav2lip").with_suffix(".json").read_text())
    assert sidecar["int8_error"]["relative_to_variation"] <= FULL_SIZE_VARIATION_ERROR
    assert sidecar["sha256"] == hashlib.sha256(int8_graph(full_size, "wav2lip").read_bytes()).hexdigest()
    assert sidecar["precision"].startswith("int8") and "synthetic voice" in sidecar["calibration"]


@pytest.mark.slow
def test_the_int8_graph_is_quantized_and_keeps_the_served_interface(full_size: Path) -> None:
    fp32, int8 = (onnx.load(str(path)) for path in (full_size / "wav2lip.onnx", int8_graph(full_size, "wav2lip")))
    ops = {node.op_type for node in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for kind in ("input", "output"):
        assert [t.name for t in getattr(int8.graph, kind)] == [t.name for t in getattr(fp32.graph, kind)]
    assert int8_graph(full_size, "wav2lip").stat().st_size < 0.4 * (full_size / "wav2lip.onnx").stat().st_size
    for rows in (1, 5):  # any batch, as Triton's dynamic batcher sends
        assert _run(int8_graph(full_size, "wav2lip"), synthetic_inputs("wav2lip", rows, seed=7)).shape[0] == rows


def test_a_calibration_that_misses_the_range_is_refused_and_writes_nothing(
    reduced_factory: StageFactory, tmp_path: Path
) -> None:
    onnx_dir = _export_wav2lip(reduced_factory, tmp_path)
    silent_and_black = {  # ranges measured on all-zero inputs cannot represent real ones
        "mel_window": np.full((8, 1, 80, 16), -4.0, np.float32),
        "face": np.zeros((8, 6, 96, 96), np.float32),
    }
    with pytest.raises(ValueError, match=f"over the {INT8_TOLERANCE} allowed"):
        quantize_stage(onnx_dir, "wav2lip", silent_and_black)
    assert not int8_graph(onnx_dir, "wav2lip").exists() and not list(onnx_dir.glob(".quantize-*"))
    quantize_stage(onnx_dir, "wav2lip")  # the default calibration passes on the same graph
    assert int8_graph(onnx_dir, "wav2lip").is_file()


def test_only_the_cpu_repository_serves_int8_and_only_where_asked(
    reduced_factory: StageFactory, tmp_path: Path
) -> None:
    onnx_dir = _export_wav2lip(reduced_factory, tmp_path / "onnx")
    with pytest.raises(FileNotFoundError, match="python -m export quantize"):
        write_repository(onnx_dir, tmp_path / "repo", RepositorySettings(int8_models=("wav2lip",)))
    quantize_stage(onnx_dir, "wav2lip")

    plain = write_repository(onnx_dir, tmp_path / "plain")
    served = plain.path / "wav2lip" / "1" / "model.onnx"
    assert served.read_bytes() == (onnx_dir / "wav2lip.onnx").read_bytes()

    int8 = write_repository(onnx_dir, tmp_path / "int8", RepositorySettings(int8_models=("wav2lip",)))
    served = int8.path / "wav2lip" / "1" / "model.onnx"
    assert served.read_bytes() == int8_graph(onnx_dir, "wav2lip").read_bytes()
    manifest = json.loads((int8.path / "repository.json").read_text())
    assert manifest["settings"]["int8_models"] == ["wav2lip"]
    assert manifest["models"]["wav2lip"]["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert json.loads((served.parent / "model.json").read_text())["precision"].startswith("int8")

    with pytest.raises(ValueError, match="cpu target"):
        RepositorySettings(target="gpu", int8_models=("wav2lip",))
    with pytest.raises(ValueError, match="no int8 form for generator"):
        RepositorySettings(int8_models=("generator",))


def test_calibration_files_and_the_command_line(reduced_factory: StageFactory, tmp_path: Path) -> None:
    onnx_dir = _export_wav2lip(reduced_factory, tmp_path / "onnx")
    inputs = synthetic_inputs("wav2lip", rows=12, seed=3)
    np.savez(tmp_path / "mine.npz", **inputs)
    loaded = load_calibration(tmp_path / "mine.npz", "wav2lip")
    assert set(loaded) == {"mel_window", "face"} and loaded["face"].shape == (12, 6, 96, 96)
    np.savez(tmp_path / "partial.npz", face=inputs["face"])
    with pytest.raises(ValueError, match=r"lacks the input\(s\) \['mel_window'\]"):
        load_calibration(tmp_path / "partial.npz", "wav2lip")
    np.savez(tmp_path / "ragged.npz", mel_window=inputs["mel_window"][:3], face=inputs["face"])
    with pytest.raises(ValueError, match="different numbers of rows"):
        load_calibration(tmp_path / "ragged.npz", "wav2lip")

    assert export_main(["quantize", "--onnx", str(onnx_dir), "--calibration", str(tmp_path / "mine.npz")]) == 0
    sidecar = json.loads(int8_graph(onnx_dir, "wav2lip").with_suffix(".json").read_text())
    assert sidecar["calibration"] == "12 rows of mine.npz"
    assert export_main(["quantize", "--onnx", str(onnx_dir), "--stages", "generator"]) == 1
    assert export_main(["quantize", "--onnx", str(tmp_path / "nowhere")]) == 1


def test_up_quantizes_once_and_serves_int8_when_asked(reduced_factory: StageFactory, tmp_path: Path) -> None:
    from gateway.ops.up import EXPORT_COMPLETE, _onnx_dir, prepare_repository
    from gateway.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        demo=True, artifacts_dir=tmp_path / "artifacts", model_repository=tmp_path / "repo", int8_models=["wav2lip"]
    )
    onnx_dir = _onnx_dir(settings)
    onnx_dir.mkdir(parents=True)
    (onnx_dir / EXPORT_COMPLETE).touch()  # the export step is done; only its Wav2Lip graph is there
    assert prepare_repository(settings) is None  # asked for int8 without a Wav2Lip graph: refused, said why

    _export_wav2lip(reduced_factory, onnx_dir)
    assert prepare_repository(settings) is not None
    served = settings.model_repository / "wav2lip" / "1" / "model.onnx"
    assert served.read_bytes() == int8_graph(onnx_dir, "wav2lip").read_bytes()
    made = int8_graph(onnx_dir, "wav2lip").stat().st_mtime_ns
    assert prepare_repository(settings.model_copy(update={"int8_models": []})) is not None
    assert served.read_bytes() == (onnx_dir / "wav2lip.onnx").read_bytes()  # fp32 again when not asked
    assert prepare_repository(settings) is not None
    assert int8_graph(onnx_dir, "wav2lip").stat().st_mtime_ns == made  # quantized once, reused

    # A new export of the fp32 graph (other weights) makes the int8 graph stale: the repository refuses it, and
    # `up` quantizes again.
    _export_wav2lip(StageFactory(Variant(checkpoints=None, seed=1)), onnx_dir)
    assert not int8_is_current(onnx_dir, "wav2lip")
    with pytest.raises(ValueError, match=r"made from another wav2lip\.onnx"):
        write_repository(onnx_dir, tmp_path / "stale", RepositorySettings(int8_models=("wav2lip",)))
    assert prepare_repository(settings) is not None
    assert int8_is_current(onnx_dir, "wav2lip") and int8_graph(onnx_dir, "wav2lip").stat().st_mtime_ns != made
    assert served.read_bytes() == int8_graph(onnx_dir, "wav2lip").read_bytes()
    # LIPSYNC_OPENVINO_MODELS: the same graph, run by OpenVINO.
    config = settings.model_repository / "wav2lip" / "config.pbtxt"
    assert 'string_value: "onnxruntime"' in config.read_text()
    assert prepare_repository(settings.model_copy(update={"openvino_models": ["wav2lip"]})) is not None
    assert 'string_value: "openvino"' in config.read_text()


def test_calibration_from_real_speech_and_portraits(
    reduced_factory: StageFactory, spoken_wav: Path, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    from export.mel import log_mel
    from gateway.engines.wav2lip import calibration
    from gateway.engines.wav2lip.face import portrait_face_input
    from lipsync.audio_io import decode_audio
    from lipsync.wav2lip import wav2lip_mel_windows

    portrait = tmp_path / "astronaut.jpg"
    portrait.write_bytes(astronaut_jpeg)
    faces_file = tmp_path / "faces.npz"
    # The gateway's face finder writes the faces; the export reads only the arrays.
    assert calibration.main([str(portrait), "--out", str(faces_file)]) == 0
    inputs = calibration_from_media("wav2lip", spoken_wav, load_faces(faces_file, "wav2lip"), rows=20)
    wav = decode_audio(spoken_wav)
    windows = wav2lip_mel_windows(log_mel(wav, crop_to_frames=False), wav.size // 640)
    assert inputs["mel_window"].shape == (20, 1, 80, 16) and inputs["face"].shape == (20, 6, 96, 96)
    np.testing.assert_array_equal(inputs["mel_window"][0], windows[0])  # spread from the first frame…
    np.testing.assert_array_equal(inputs["mel_window"][-1], windows[-1])  # …to the last
    np.testing.assert_array_equal(inputs["face"][7], portrait_face_input(astronaut_jpeg)[0])

    onnx_dir = _export_wav2lip(reduced_factory, tmp_path / "onnx")
    media = ["--calibration-audio", str(spoken_wav), "--calibration-faces", str(faces_file)]
    assert export_main(["quantize", "--onnx", str(onnx_dir), *media]) == 0
    sidecar = json.loads(int8_graph(onnx_dir, "wav2lip").with_suffix(".json").read_text())
    assert sidecar["calibration"].endswith(f"rows of {spoken_wav.name} with 1 face(s)")
    assert export_main(["quantize", "--onnx", str(onnx_dir), "--calibration-audio", str(spoken_wav)]) == 2
    np.savez(tmp_path / "x.npz", **inputs)
    assert export_main(["quantize", "--onnx", str(onnx_dir), "--calibration", str(tmp_path / "x.npz"), *media]) == 2
    np.savez(tmp_path / "x.npz", face=inputs["mel_window"])
    with pytest.raises(ValueError, match=r"x\.npz: faces of shape \(20, 1, 80, 16\)"):
        load_faces(tmp_path / "x.npz", "wav2lip")

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(ValueError, match=r"blank\.png: No face was found"):
        calibration.face_inputs([portrait, blank])
    assert calibration.main([str(portrait), str(blank), "--out", str(faces_file)]) == 1


def test_openvino_runs_the_int8_graph_within_its_bound(full_size: Path) -> None:
    """The cpu repository may serve the int8 graph in OpenVINO: its own int8 kernels, checked like ONNX Runtime's."""
    from export.triton_model import OpenVinoRunner

    sidecar = json.loads(int8_graph(full_size, "wav2lip").with_suffix(".json").read_text())
    assert 0 < sidecar["int8_error"]["openvino_relative_to_variation"] <= INT8_TOLERANCE
    feed = synthetic_inputs("wav2lip", rows=6, seed=11)
    want = _run(full_size / "wav2lip.onnx", feed)
    int8 = OpenVinoRunner(int8_graph(full_size, "wav2lip"), 2, ["prediction"]).run(feed)[0]
    assert variation_error(int8, want) <= INT8_TOLERANCE
    fp32 = OpenVinoRunner(full_size / "wav2lip.onnx", 2, ["prediction"]).run(feed)[0]
    np.testing.assert_allclose(fp32, want, atol=1e-5)  # held to fp32: never bf16, even where the CPU has it


@pytest.mark.triton
def test_the_cpu_repository_serves_a_model_in_openvino(reduced_factory: StageFactory, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    from export.triton_model import OpenVinoRunner
    from gateway.triton.server import EmbeddedTriton

    onnx_dir = _export_wav2lip(reduced_factory, tmp_path / "onnx")
    quantize_stage(onnx_dir, "wav2lip")
    with pytest.raises(ValueError, match="cpu target"):
        RepositorySettings(target="gpu", openvino_models=("wav2lip",))
    with pytest.raises(ValueError, match="no stage named nothing"):
        RepositorySettings(openvino_models=("nothing",))
    settings = RepositorySettings(int8_models=("wav2lip",), openvino_models=("wav2lip",), intra_op_threads=1)
    repository = write_repository(onnx_dir, tmp_path / "repo", settings)
    config = (repository.path / "wav2lip" / "config.pbtxt").read_text()
    assert 'key: "runtime"\n  value {\n    string_value: "openvino"' in config
    feed = synthetic_inputs("wav2lip", rows=3, seed=5)
    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        try:
            inputs = []
            for name, array in feed.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            served = client.infer("wav2lip", inputs).as_numpy("prediction")
        finally:
            client.close()
    # OpenVINO's int8 kernels round differently from ONNX Runtime's: the served frames are OpenVINO's.
    graph = int8_graph(onnx_dir, "wav2lip")
    np.testing.assert_allclose(served, OpenVinoRunner(graph, 1, ["prediction"]).run(feed)[0], atol=1e-6)
    assert np.abs(served - _run(graph, feed)).max() > 1e-4
    assert variation_error(served, _run(onnx_dir / "wav2lip.onnx", feed)) <= INT8_TOLERANCE
