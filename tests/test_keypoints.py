"""Keypoint detector: golden fidelity, strict loading, batching, reduced config, ONNX parity."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.models.keypoints import FULL_256, REDUCED, KPDetector, load_kp_detector
from export.onnx import relative_error as rel_err
from export.synthetic import golden_weights
from export.weights import CheckpointError, StateDict

FILE = "SadTalker_V0.0.2_256.safetensors"
PREFIX = "kp_extractor."


@pytest.fixture(scope="module")
def official() -> StateDict:
    """The golden-rule tensors of the kp_extractor group, prefix stripped."""
    return golden_weights(FILE, PREFIX)


@pytest.fixture(scope="module")
def detector(official: StateDict) -> KPDetector:
    return load_kp_detector(official)


def test_golden(detector: KPDetector) -> None:
    golden = np.load(GOLDEN_DIR / "kp_detector.npz")
    with torch.no_grad():
        kp = detector(torch.from_numpy(golden["image"]))
    assert kp.shape == (1, 15, 3)
    assert rel_err(kp, golden["kp"]) <= 1e-5


def test_renamed_tensor_is_named(official: StateDict) -> None:
    broken = dict(official)
    broken["predictor.convx.weight"] = broken.pop("predictor.conv.weight")
    with pytest.raises(CheckpointError, match=r"predictor\.conv\.weight") as info:
        load_kp_detector(broken)
    assert "predictor.convx.weight" in str(info.value)


def test_changed_shape_is_named(official: StateDict) -> None:
    broken = dict(official)
    broken["kp.weight"] = torch.zeros(14, 32, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"kp\.weight has shape \(14, 32, 3, 3, 3\)"):
        load_kp_detector(broken)


def test_batch_independence() -> None:
    torch.manual_seed(0)
    net = KPDetector(REDUCED).eval()
    images = torch.rand(3, 3, 256, 256)
    with torch.no_grad():
        batched = net(images)
        single = torch.cat([net(images[i : i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


def test_shapes_full_and_reduced() -> None:
    with torch.device("meta"):
        assert KPDetector(FULL_256)(torch.rand(2, 3, 256, 256)).shape == (2, 15, 3)
        assert KPDetector(FULL_256)(torch.rand(1, 3, 512, 512)).shape == (1, 15, 3)
    with torch.no_grad():
        kp = KPDetector(REDUCED).eval()(torch.rand(2, 3, 256, 256))
    assert kp.shape == (2, 15, 3)
    assert bool(kp.abs().max() <= 1)  # a convex combination of grid points in [-1, 1]


def export_onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is asked for
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["kp"],
            dynamic_axes={"image": {0: "batch"}, "kp": {0: "batch"}},
        )


def test_onnx_matches_torch(detector: KPDetector, tmp_path: Path) -> None:
    """The full-size detector with the golden weights: ONNX Runtime against the golden and torch, batch 1 and 3."""
    path = tmp_path / "kp_detector.onnx"
    export_onnx(detector, (torch.rand(1, 3, 256, 256),), path, opset=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    golden = np.load(GOLDEN_DIR / "kp_detector.npz")
    (kp,) = session.run(None, {"image": golden["image"]})
    assert rel_err(kp, golden["kp"]) <= 1e-5
    images = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    (kp3,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        ref = detector(images)
    assert kp3.shape == (3, 15, 3)
    assert not np.isnan(kp3).any()
    assert rel_err(kp3, ref) <= 1e-4
