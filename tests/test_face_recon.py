"""face_recon (3DMM coefficient ResNet-50): golden fidelity, checkpoint layout and errors, batching, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.models.face_recon import (
    COEFF_GROUPS,
    FULL_256,
    NUM_COEFFS,
    REDUCED,
    FaceRecon,
    FaceReconConfig,
    convert_state_dict,
    load_face_recon,
    split_coeffs,
)
from export.onnx import relative_error as rel_err
from export.synthetic import golden_weights as golden_rule_weights
from export.weights import CheckpointError, StateDict, read_manifest

FILE = "SadTalker_V0.0.2_256.safetensors"
PREFIX = "face_3drecon."


@pytest.fixture(scope="module")
def golden_weights() -> StateDict:
    return golden_rule_weights(FILE, PREFIX)


@pytest.fixture(scope="module")
def full_model(golden_weights: StateDict) -> FaceRecon:
    return load_face_recon(golden_weights)


def reduced_model(seed: int = 0) -> FaceRecon:
    torch.manual_seed(seed)
    model = FaceRecon(REDUCED).eval()
    # Non-trivial batch-norm statistics so that eval-mode normalisation is exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_golden(full_model: FaceRecon) -> None:
    fixture = np.load(GOLDEN_DIR / "face_recon.npz")
    with torch.no_grad():
        coeffs = full_model(torch.from_numpy(fixture["image"]))
    assert coeffs.shape == (1, NUM_COEFFS)
    assert rel_err(coeffs, fixture["coeffs"]) <= 1e-5


def test_full_layout_matches_manifest() -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FaceRecon(FULL_256).state_dict().items()}
    official = {t.name[len(PREFIX) :]: t.shape for t in read_manifest(FILE).with_prefix(PREFIX)}
    assert expected == official


def test_split_coeffs_ranges() -> None:
    coeffs = torch.arange(2 * NUM_COEFFS, dtype=torch.float32).reshape(2, NUM_COEFFS)
    parts = split_coeffs(coeffs)
    assert list(parts) == [name for name, _ in COEFF_GROUPS]
    assert parts["exp"][0, 0] == 80 and parts["exp"].shape == (2, 64)
    assert parts["angle"][0].tolist() == [224.0, 225.0, 226.0]
    assert parts["trans"][0].tolist() == [254.0, 255.0, 256.0]
    assert torch.equal(torch.cat(list(parts.values()), dim=1), coeffs)
    with pytest.raises(ValueError, match="257"):
        split_coeffs(torch.zeros(1, 256))


def test_renamed_tensor_is_named(golden_weights: StateDict) -> None:
    broken = dict(golden_weights)
    broken["backbone.layer3.2.conv2.weights"] = broken.pop("backbone.layer3.2.conv2.weight")
    with pytest.raises(CheckpointError, match=r"backbone\.layer3\.2\.conv2\.weight") as info:
        load_face_recon(broken)
    assert "backbone.layer3.2.conv2.weights" in str(info.value)


def test_changed_shape_is_named(golden_weights: StateDict) -> None:
    broken = dict(golden_weights)
    broken["final_layers.1.weight"] = torch.zeros(65, 2048, 1, 1)
    with pytest.raises(CheckpointError, match=r"final_layers\.1\.weight.*\(65, 2048, 1, 1\)"):
        load_face_recon(broken)


def test_convert_passes_unknown_tensors_through(golden_weights: StateDict) -> None:
    extra = dict(golden_weights, **{"backbone.fc.weight": torch.zeros(1000, 2048)})
    assert "backbone.fc.weight" in convert_state_dict(extra)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: backbone\.fc\.weight"):
        load_face_recon(extra)


def test_batch_independence(full_model: FaceRecon) -> None:
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = full_model(images)
        single = torch.cat([full_model(images[i : i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


@pytest.mark.parametrize("config", [REDUCED, FULL_256])
def test_shapes(config: FaceReconConfig) -> None:
    torch.manual_seed(0)
    model = FaceRecon(config).eval()
    with torch.no_grad():
        coeffs = model(torch.rand(2, 3, 224, 224))
    assert coeffs.shape == (2, NUM_COEFFS)
    assert torch.isfinite(coeffs).all()


def export_onnx(model: FaceRecon, path: Path) -> None:
    """Legacy-exporter call with a dynamic batch axis (to move into export/onnx.py later)."""
    torch.onnx.export(
        model.eval(),
        (torch.rand(1, 3, 224, 224),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["coeffs"],
        dynamic_axes={"image": {0: "batch"}, "coeffs": {0: "batch"}},
    )


@pytest.mark.parametrize("which", ["reduced", "full"])
def test_onnx_matches_torch(which: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model = reduced_model() if which == "reduced" else request.getfixturevalue("full_model")
    path = tmp_path / "face_recon.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["coeffs"]
    for batch in (1, 3):
        images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(["coeffs"], {"image": images.numpy()})
        with torch.no_grad():
            want = model(images)
        assert got.shape == (batch, NUM_COEFFS)
        assert not np.isnan(got).any()
        assert rel_err(got, want) <= 1e-4
