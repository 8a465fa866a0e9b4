"""Wav2Lip: golden fidelity (PyTorch and ONNX Runtime), the upstream input construction, strict loading of the
checkpoint layouts, the batch-norm fold, REDUCED, size and cost."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from export.engines import STAGES
from export.layers import fold_batch_norms
from export.models.wav2lip import FULL, REDUCED, Wav2Lip, convert_state_dict, load_wav2lip
from export.onnx import check_parity, export_stage
from export.onnx import relative_error as rel_err
from export.stages import StageFactory, Variant
from export.synthetic import golden_weights
from export.weights import CheckpointError, StateDict, read_checkpoint, read_manifest
from lipsync.wav2lip import (
    face_input,
    wav2lip_mel_window_indices,
    wav2lip_mel_windows,
    wav2lip_upstream_num_frames,
    wav2lip_window_starts,
)

FILE = "wav2lip_gan.pth"


@pytest.fixture(scope="module")
def official() -> StateDict:
    return golden_weights(FILE)


@pytest.fixture(scope="module")
def model(official: StateDict) -> Wav2Lip:
    return load_wav2lip(official)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "wav2lip.npz") as data:
        return {k: data[k] for k in data.files}


def _run(module: nn.Module, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: torch.Tensor = module(torch.from_numpy(mel), torch.from_numpy(face))
    return out.numpy()


# --------------------------------------------------------------------------- fidelity


def test_golden(model: Wav2Lip, golden: dict[str, np.ndarray]) -> None:
    prediction = _run(model, golden["mel_windows"], golden["face_input"])
    assert prediction.shape == golden["prediction"].shape == (4, 3, 96, 96)
    assert rel_err(prediction, golden["prediction"]) <= 1e-5


def test_folded_batch_norms_compute_the_same_function(model: Wav2Lip, golden: dict[str, np.ndarray]) -> None:
    folded = fold_batch_norms(load_wav2lip(golden_weights(FILE)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    plain = _run(model, golden["mel_windows"], golden["face_input"])
    assert rel_err(_run(folded, golden["mel_windows"], golden["face_input"]), plain) <= 1e-6


def test_batch_rows_are_independent(model: Wav2Lip, golden: dict[str, np.ndarray]) -> None:
    mel, face = golden["mel_windows"][:3], golden["face_input"][:3]
    batched = _run(model, mel, face)
    single = np.concatenate([_run(model, mel[i : i + 1], face[i : i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-6


# --------------------------------------------------------------------------- the inputs, as upstream builds them


def test_face_input_is_upstreams_masked_input(golden: dict[str, np.ndarray]) -> None:
    built = face_input(golden["face_bgr"])
    assert built.dtype == np.float32 and built.shape == (4, 6, 96, 96)
    assert np.array_equal(built, golden["face_input"])
    assert not built[:, :3, 48:].any() and built[:, 3:, 48:].any()


@pytest.mark.parametrize(
    ("faces", "message"),
    [
        (np.zeros((2, 96, 96, 3), np.float32), "uint8"),
        (np.zeros((96, 96, 3), np.uint8), r"\(N, 96, 96, 3\)"),
        (np.zeros((1, 128, 128, 3), np.uint8), r"\(1, 128, 128, 3\)"),
    ],
)
def test_face_input_rejects_other_layouts(faces: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        face_input(faces)


def test_window_starts_are_upstreams_chunking(golden: dict[str, np.ndarray]) -> None:
    mel = golden["mel"]  # (80, T) as upstream holds it
    starts = golden["window_starts"]
    assert wav2lip_upstream_num_frames(mel.shape[1]) == len(starts)
    assert np.array_equal(wav2lip_window_starts(len(starts), mel.shape[1]), starts)
    indices = wav2lip_mel_window_indices(len(starts), mel.shape[1])
    assert indices.shape == (len(starts), 16) and np.array_equal(indices[:, 0], starts)
    windows = wav2lip_mel_windows(np.ascontiguousarray(mel.T), len(starts))
    assert windows.shape == (len(starts), 1, 80, 16)
    assert np.array_equal(windows[golden["frames"]], golden["mel_windows"])


def _upstream_chunk_starts(num_mel_frames: int, fps: float = 25.0) -> list[int]:
    """Upstream inference.py's loop, in its float arithmetic."""
    starts, i = [], 0
    while True:
        start = int(i * (80.0 / fps))
        if start + 16 > num_mel_frames:
            starts.append(num_mel_frames - 16)
            return starts
        starts.append(start)
        i += 1


def test_window_starts_equal_upstreams_float_loop_for_every_clip_length() -> None:
    for num_mel_frames in range(16, 4000):
        expected = _upstream_chunk_starts(num_mel_frames)
        assert wav2lip_upstream_num_frames(num_mel_frames) == len(expected), num_mel_frames
        got = wav2lip_window_starts(len(expected) + 5, num_mel_frames)
        assert got[: len(expected)].tolist() == expected, num_mel_frames
        assert (got[len(expected) :] == num_mel_frames - 16).all()  # later frames keep the tail window


def test_too_little_audio_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"at least 16 mel frames.*got 15"):
        wav2lip_window_starts(3, 15)
    with pytest.raises(ValueError, match="num_frames"):
        wav2lip_window_starts(-1, 40)
    with pytest.raises(ValueError, match=r"\(T_mel, 80\)"):
        wav2lip_mel_windows(np.zeros((80, 40), np.float32), 2)


# --------------------------------------------------------------------------- checkpoint layout and loading


def test_module_names_and_shapes_are_the_checkpoints() -> None:
    manifest = read_manifest(FILE)
    expected = {t.name: t.shape for t in manifest.tensors}
    have = {k: tuple(v.shape) for k, v in Wav2Lip(FULL).state_dict().items()}
    assert have == expected
    assert read_manifest("wav2lip.pth").tensors == manifest.tensors


def test_full_size_parameter_count_and_cost() -> None:
    manifest = read_manifest(FILE)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    learned = sum(math.prod(t.shape) for t in manifest.tensors if not t.name.endswith(buffers))
    net = Wav2Lip(FULL).eval()
    assert sum(p.numel() for p in net.parameters()) == learned == 36_298_035
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
    assert counter.get_total_flops() == pytest.approx(7.9e9, rel=0.01)


def _with_prefix(state: StateDict) -> StateDict:
    return {f"module.{k}": v for k, v in state.items()}


def test_state_dict_loads_with_and_without_the_parallel_prefix(official: StateDict) -> None:
    assert convert_state_dict(_with_prefix(official)).keys() == official.keys()
    plain, prefixed = load_wav2lip(official), load_wav2lip(_with_prefix(official))
    for name, tensor in plain.state_dict().items():
        assert torch.equal(prefixed.state_dict()[name], tensor), name


def test_checkpoint_file_written_both_ways_loads_strictly_and_ignores_the_optimizer_visibly(
    synthetic_checkpoint: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As published: DataParallel names under `state_dict`, plus the optimizer and the step counters.
    unprefixed = read_checkpoint(synthetic_checkpoint(FILE))
    published = tmp_path / FILE
    torch.save(
        {
            "state_dict": _with_prefix(unprefixed),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "global_step": 253_000,
            "global_epoch": 17,
        },
        published,
    )
    with caplog.at_level(logging.INFO):
        state = read_checkpoint(published)
        module = load_wav2lip(state, source=published.name)
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert any(all(k in m for k in ("global_epoch", "global_step", "optimizer", FILE)) for m in ignored), ignored
    assert any("'module.'" in r.getMessage() for r in caplog.records)
    reference = load_wav2lip(unprefixed)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name


def test_renamed_or_missing_tensor_is_reported(official: StateDict) -> None:
    renamed = dict(official)
    renamed["output_block.2.weight"] = renamed.pop("output_block.1.weight")
    with pytest.raises(CheckpointError, match=r"missing tensors: output_block\.1\.weight") as info:
        load_wav2lip(renamed)
    assert "unexpected tensors: output_block.2.weight" in str(info.value)
    missing = dict(official)
    del missing["face_decoder_blocks.3.0.conv_block.1.running_var"]
    with pytest.raises(CheckpointError, match=r"wav2lip_gan\.pth: missing tensors: face_decoder_blocks\.3\.0\."):
        load_wav2lip(missing)


def test_changed_shape_and_duplicate_names_are_reported(official: StateDict) -> None:
    reshaped = dict(official)
    reshaped["face_decoder_blocks.1.0.conv_block.0.weight"] = torch.zeros(512, 1024, 3, 3)
    with pytest.raises(CheckpointError, match=r"face_decoder_blocks\.1\.0\.conv_block\.0\.weight.*\(512, 1024, 3, 3\)"):
        load_wav2lip(reshaped)
    doubled = {**official, "module.audio_encoder.0.conv_block.0.bias": official["audio_encoder.0.conv_block.0.bias"]}
    with pytest.raises(CheckpointError, match=r"audio_encoder\.0\.conv_block\.0\.bias appears both"):
        convert_state_dict(doubled)


# --------------------------------------------------------------------------- REDUCED


def test_reduced_config_has_the_same_topology_and_io() -> None:
    assert Wav2Lip(REDUCED).state_dict().keys() == Wav2Lip(FULL).state_dict().keys()
    torch.manual_seed(0)
    net = Wav2Lip(REDUCED).eval()
    assert sum(p.numel() for p in net.parameters()) < 100_000
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        mel = torch.randn(batch, 1, 80, 16, generator=generator)
        face = torch.rand(batch, 6, 96, 96, generator=generator)
        with torch.no_grad():
            out = net(mel, face)
        assert out.shape == (batch, 3, 96, 96)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_reduced_stage_is_seeded_and_folded(reduced_factory: StageFactory) -> None:
    module = reduced_factory.build("wav2lip")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    again = StageFactory(Variant(None)).build("wav2lip")
    for name, tensor in module.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


# --------------------------------------------------------------------------- ONNX (full size, golden weights)


@pytest.fixture(scope="module")
def exported(synthetic_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served stage as `python -m export onnx` builds it from a synthetic wav2lip_gan.pth (golden rule)."""
    directory = synthetic_checkpoint(FILE).parent
    factory = StageFactory(Variant(directory))
    out = tmp_path_factory.mktemp("wav2lip_onnx") / "wav2lip.onnx"
    return export_stage(STAGES["wav2lip"], factory.build("wav2lip"), out)


@pytest.mark.slow
def test_onnx_reproduces_upstream(exported: Path, golden: dict[str, np.ndarray]) -> None:
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (prediction,) = session.run(["prediction"], {"mel_window": golden["mel_windows"], "face": golden["face_input"]})
    assert rel_err(prediction, golden["prediction"]) <= 1e-5


@pytest.mark.slow
def test_onnx_matches_the_module_on_fresh_inputs(exported: Path, model: Wav2Lip) -> None:
    parity = check_parity(STAGES["wav2lip"], fold_batch_norms(load_wav2lip(golden_weights(FILE))), exported)
    assert parity.finite and set(parity.relative_error) == {1, 3}
    assert parity.worst <= 1e-5
    # The same inputs through the unfolded network: the fold changes nothing beyond rounding.
    unfolded = check_parity(STAGES["wav2lip"], model, exported)
    assert unfolded.worst <= 1e-5


@pytest.mark.slow
def test_onnx_runtime_fusion_of_the_unfolded_graph_agrees(
    model: Wav2Lip, exported: Path, golden: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """ONNX Runtime fuses conv → batch norm itself; our fold and its fusion give the same frames."""
    plain = export_stage(STAGES["wav2lip"], model, tmp_path / "wav2lip_unfolded.onnx")
    feed = {"mel_window": golden["mel_windows"], "face": golden["face_input"]}
    results = {}
    for name, path, level in [
        ("folded", exported, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("unfolded-fused", plain, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("unfolded-unoptimised", plain, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ]:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (results[name],) = session.run(["prediction"], feed)
    assert rel_err(results["unfolded-fused"], results["unfolded-unoptimised"]) <= 1e-6
    assert rel_err(results["folded"], results["unfolded-unoptimised"]) <= 1e-6
