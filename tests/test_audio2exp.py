"""Audio2Exp: golden fidelity on rule weights, strict loading, batch independence, REDUCED, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.models.audio2exp import FULL_256, REDUCED, Audio2Exp, convert_state_dict, load_audio2exp
from export.onnx import relative_error as rel_err
from export.synthetic import golden_weights
from export.weights import CheckpointError, StateDict

FILE = "SadTalker_V0.0.2_256.safetensors"


@pytest.fixture(scope="module")
def official() -> StateDict:
    return golden_weights(FILE, "audio2exp.")


@pytest.fixture(scope="module")
def model(official: StateDict) -> Audio2Exp:
    return load_audio2exp(official)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "audio2exp.npz") as data:
        return {k: data[k] for k in data.files}


def test_golden(model: Audio2Exp, golden: dict[str, np.ndarray]) -> None:
    # Upstream's netG takes ref (1, N, 64) and ratio (1, N, 1); per frame that is (N, 64) and (N, 1).
    with torch.no_grad():
        exp = model(
            torch.from_numpy(golden["mel"]),
            torch.from_numpy(golden["ref_exp"][0]),
            torch.from_numpy(golden["ratio"][0]),
        ).numpy()
    assert exp.shape == golden["exp"].shape[1:]
    assert rel_err(exp, golden["exp"][0]) <= 1e-5


def test_every_checkpoint_tensor_is_used(official: StateDict) -> None:
    assert set(convert_state_dict(official)) == set(official)
    assert set(official) == set(Audio2Exp(FULL_256).state_dict())


def test_renamed_tensor_is_reported(official: StateDict) -> None:
    broken = dict(official)
    broken["mapping_1.weight"] = broken.pop("mapping1.weight")
    with pytest.raises(CheckpointError, match=r"mapping1\.weight") as info:
        load_audio2exp(broken)
    assert "mapping_1.weight" in str(info.value)


def test_changed_shape_is_reported(official: StateDict) -> None:
    broken = dict(official)
    broken["audio_encoder.3.conv_block.0.weight"] = torch.zeros(64, 32, 3, 1)
    with pytest.raises(CheckpointError, match=r"audio_encoder\.3\.conv_block\.0\.weight.*\(64, 32, 3, 1\)"):
        load_audio2exp(broken)


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(batch, 1, 80, 16, generator=g) * 8 - 4
    return mel, torch.randn(batch, 64, generator=g) * 0.3, torch.rand(batch, 1, generator=g)


def test_batch_independence(model: Audio2Exp) -> None:
    mel, ref, ratio = _inputs(3)
    with torch.no_grad():
        batched = model(mel, ref, ratio).numpy()
        single = np.concatenate([model(mel[i : i + 1], ref[i : i + 1], ratio[i : i + 1]).numpy() for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


def test_reduced_config_has_the_same_io() -> None:
    torch.manual_seed(0)
    model = Audio2Exp(REDUCED).eval()
    for batch in (1, 3):
        with torch.no_grad():
            out = model(*_inputs(batch))
        assert out.shape == (batch, 64)
        assert torch.isfinite(out).all()


def test_onnx(model: Audio2Exp, tmp_path: Path) -> None:
    path = tmp_path / "audio2exp.onnx"
    model.eval()
    torch.onnx.export(
        model,
        _inputs(2),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["mel", "ref_exp", "ratio"],
        output_names=["exp"],
        dynamic_axes={name: {0: "batch"} for name in ("mel", "ref_exp", "ratio", "exp")},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        mel, ref, ratio = _inputs(batch, seed=batch)
        (onnx_exp,) = session.run(["exp"], {"mel": mel.numpy(), "ref_exp": ref.numpy(), "ratio": ratio.numpy()})
        with torch.no_grad():
            torch_exp = model(mel, ref, ratio).numpy()
        assert not np.isnan(onnx_exp).any()
        assert rel_err(onnx_exp, torch_exp) <= 1e-4
