"""MappingNet + keypoint transformation: golden (70 and 73 coefficients), strict loading, batch, REDUCED, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.models.mapping import (
    CONFIG_FOR_FILE,
    FULL_70,
    REDUCED,
    MappingConfig,
    MappingNet,
    MappingWithTransform,
    load_mapping,
    rotation_matrix,
    transform_keypoints,
)
from export.onnx import relative_error as rel_err
from export.synthetic import synthetic_state_dict
from export.weights import CheckpointError, StateDict, read_manifest

CASES = [("mapping_00229-model.pth.tar", "mapping.npz"), ("mapping_00109-model.pth.tar", "mapping_still.npz")]
HEADS = ("yaw", "pitch", "roll", "t", "exp")


def official(file_name: str) -> StateDict:
    return synthetic_state_dict(read_manifest(file_name))  # the mapping files have no prefix


@pytest.mark.parametrize(("file_name", "fixture"), CASES)
def test_golden_heads_and_keypoints(file_name: str, fixture: str) -> None:
    config = CONFIG_FOR_FILE[file_name]
    mapping = load_mapping(official(file_name), config, source=file_name)
    with np.load(GOLDEN_DIR / fixture) as data:
        golden = {k: data[k] for k in data.files}
    assert golden["window"].shape[1] == config.coeff_nc
    window = torch.from_numpy(golden["window"])
    with torch.no_grad():
        heads = mapping(window)
        kp = MappingWithTransform(mapping).eval()(window, torch.from_numpy(golden["kp_canonical"]))
    for name, value in zip(HEADS, heads, strict=True):
        assert value.shape == golden[name].shape, name
        assert rel_err(value.numpy(), golden[name]) <= 1e-5, name
    assert kp.shape == golden["kp"].shape == (2, 15, 3)
    assert rel_err(kp.numpy(), golden["kp"]) <= 1e-5


def test_transform_ignores_tx_tz_and_uses_3_14() -> None:
    g = torch.Generator().manual_seed(0)
    kp = torch.randn(2, 15, 3, generator=g)
    yaw, pitch, roll = (torch.randn(2, 66, generator=g) for _ in range(3))
    exp = torch.randn(2, 45, generator=g)
    t = torch.randn(2, 3, generator=g)
    shifted = t + torch.tensor([5.0, 0.0, -7.0])
    np.testing.assert_array_equal(
        transform_keypoints(kp, yaw, pitch, roll, t, exp).numpy(),
        transform_keypoints(kp, yaw, pitch, roll, shifted, exp).numpy(),
    )
    # 180° is 3.14 rad here, not π: sin(3.14) ≈ 1.6e-3, not 0.
    rot = rotation_matrix(torch.tensor([180.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert rot[0, 0, 0].item() == pytest.approx(np.cos(3.14), abs=1e-6)
    assert rot[0, 0, 2].item() == pytest.approx(np.sin(3.14), abs=1e-6)


def test_renamed_tensor_is_reported() -> None:
    broken = official("mapping_00229-model.pth.tar")
    broken["encoder_1.1.weight"] = broken.pop("encoder1.1.weight")
    with pytest.raises(CheckpointError, match=r"encoder1\.1\.weight"):
        load_mapping(broken, FULL_70)


def test_changed_shape_is_reported() -> None:
    # The 73-coefficient file loaded with the 70-coefficient config: the first conv's shape is named.
    with pytest.raises(CheckpointError, match=r"first\.0\.weight.*\(1024, 73, 7\).*\(1024, 70, 7\)"):
        load_mapping(official("mapping_00109-model.pth.tar"), FULL_70)


def _inputs(batch: int, coeff_nc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, coeff_nc, 27, generator=g) * 0.5, torch.randn(batch, 15, 3, generator=g) * 0.3


def test_batch_independence() -> None:
    model = MappingWithTransform(load_mapping(official("mapping_00229-model.pth.tar"), FULL_70)).eval()
    window, kp = _inputs(3, 70)
    with torch.no_grad():
        batched = model(window, kp).numpy()
        single = np.concatenate([model(window[i : i + 1], kp[i : i + 1]).numpy() for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


@pytest.mark.parametrize("config", [REDUCED, MappingConfig(coeff_nc=73, descriptor_nc=32)])
def test_reduced_config_has_the_same_io(config: MappingConfig) -> None:
    torch.manual_seed(0)
    model = MappingNet(config).eval()
    for batch in (1, 3):
        window, kp = _inputs(batch, config.coeff_nc)
        with torch.no_grad():
            heads = model(window)
            kp_driving = MappingWithTransform(model).eval()(window, kp)
        assert [tuple(h.shape) for h in heads] == [(batch, 66)] * 3 + [(batch, 3), (batch, 45)]
        assert kp_driving.shape == (batch, 15, 3)


@pytest.mark.parametrize(("file_name", "fixture"), CASES)
def test_onnx(file_name: str, fixture: str, tmp_path: Path) -> None:
    config = CONFIG_FOR_FILE[file_name]
    model = MappingWithTransform(load_mapping(official(file_name), config)).eval()
    path = tmp_path / "mapping.onnx"
    torch.onnx.export(
        model,
        _inputs(2, config.coeff_nc),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["window", "kp_canonical"],
        output_names=["kp_driving"],
        dynamic_axes={name: {0: "batch"} for name in ("window", "kp_canonical", "kp_driving")},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        window, kp = _inputs(batch, config.coeff_nc, seed=batch)
        (onnx_kp,) = session.run(["kp_driving"], {"window": window.numpy(), "kp_canonical": kp.numpy()})
        with torch.no_grad():
            torch_kp = model(window, kp).numpy()
        assert not np.isnan(onnx_kp).any()
        assert rel_err(onnx_kp, torch_kp) <= 1e-4
