"""Audio2Pose: golden audio embedding and motion, strict loading, batch independence, smoothing, REDUCED, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.models.audio2pose import (
    FULL_256,
    REDUCED,
    UNUSED_PREFIXES,
    Audio2Pose,
    convert_state_dict,
    load_audio2pose,
)
from export.onnx import relative_error as rel_err
from export.synthetic import golden_weights
from export.weights import CheckpointError, StateDict

FILE = "SadTalker_V0.0.2_256.safetensors"


@pytest.fixture(scope="module")
def official() -> StateDict:
    return golden_weights(FILE, "audio2pose.")


@pytest.fixture(scope="module")
def model(official: StateDict) -> Audio2Pose:
    return load_audio2pose(official)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "audio2pose.npz") as data:
        return {k: data[k] for k in data.files}


def test_golden_audio_embedding_and_motion(model: Audio2Pose, golden: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        audio_emb = model.audio_encoder(torch.from_numpy(golden["mels"])).numpy()
        motion = model(
            torch.from_numpy(golden["mels"]),
            torch.from_numpy(golden["z"]),
            torch.from_numpy(golden["pose_style"]),
            torch.from_numpy(golden["ref_pose"]),
        ).numpy()
    assert audio_emb.shape == golden["audio_emb"].shape == (1, 32, 512)
    assert rel_err(audio_emb, golden["audio_emb"]) <= 1e-5
    assert motion.shape == golden["motion"].shape == (1, 32, 6)
    assert rel_err(motion, golden["motion"]) <= 1e-5


def test_unused_tensors_are_exactly_the_training_parts(official: StateDict) -> None:
    dropped = set(official) - set(convert_state_dict(official))
    assert dropped == {k for k in official if k.startswith(UNUSED_PREFIXES)}
    assert any(k.startswith("netG.encoder.") for k in dropped)
    assert any(k.startswith("netD_motion.") for k in dropped)
    assert set(convert_state_dict(official)) == set(Audio2Pose(FULL_256).state_dict())


def test_renamed_tensor_is_reported(official: StateDict) -> None:
    broken = dict(official)
    broken["netG.decoder.pose_linear.w"] = broken.pop("netG.decoder.pose_linear.weight")
    with pytest.raises(CheckpointError, match=r"netG\.decoder\.pose_linear\.weight"):
        load_audio2pose(broken)


def test_changed_shape_is_reported(official: StateDict) -> None:
    broken = dict(official)
    broken["netG.decoder.classbias"] = torch.zeros(45, 64)
    with pytest.raises(CheckpointError, match=r"netG\.decoder\.classbias.*\(45, 64\)"):
        load_audio2pose(broken)


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mels = torch.rand(batch, 32, 1, 80, 16, generator=g) * 8 - 4
    z = torch.randn(batch, 64, generator=g)
    style = torch.randint(0, 46, (batch,), generator=g)
    ref = torch.randn(batch, 6, generator=g) * 0.5
    return mels, z, style, ref


def test_batch_independence(model: Audio2Pose) -> None:
    mels, z, style, ref = _inputs(3)
    decoder = model.netG.decoder
    with torch.no_grad():
        emb = model.audio_encoder(mels)
        emb_single = [model.audio_encoder(mels[i : i + 1]) for i in range(3)]
        batched = decoder(emb, z, style, ref).numpy()
        single = [decoder(emb_single[i], z[i : i + 1], style[i : i + 1], ref[i : i + 1]).numpy() for i in range(3)]
    assert rel_err(emb.numpy(), torch.cat(emb_single).numpy()) <= 1e-5
    assert rel_err(batched, np.concatenate(single)) <= 1e-5


def test_upstream_encoder_scrambles_batches() -> None:
    torch.manual_seed(0)
    model = Audio2Pose(REDUCED).eval()
    mels = _inputs(3)[0]
    with torch.no_grad():
        ours = model.audio_encoder(mels)
        per_element = torch.cat([model.audio_encoder(mels[i : i + 1]) for i in range(3)])
        # Upstream: frames concatenated time-major, then reshaped batch-major, so the elements' rows mix.
        time_major = torch.cat([mels[:, i] for i in range(32)], dim=0)
        upstream = model.audio_encoder.audio_encoder(time_major).reshape(3, 32, -1)
        upstream_single = model.audio_encoder.audio_encoder(mels[0]).reshape(1, 32, -1)
    assert rel_err(ours.numpy(), per_element.numpy()) <= 1e-5
    assert rel_err(upstream_single.numpy(), per_element[:1].numpy()) <= 1e-5  # batch 1: the same
    assert rel_err(upstream.numpy(), per_element.numpy()) > 0.01


def test_reduced_config_has_the_same_io() -> None:
    torch.manual_seed(0)
    model = Audio2Pose(REDUCED).eval()
    for batch in (1, 3):
        with torch.no_grad():
            out = model(*_inputs(batch))
        assert out.shape == (batch, 32, 6)
        assert torch.isfinite(out).all()


def test_onnx(model: Audio2Pose, tmp_path: Path) -> None:
    path = tmp_path / "audio2pose.onnx"
    model.eval()
    names = ["mels", "z", "pose_style", "ref_pose"]
    torch.onnx.export(
        model,
        _inputs(2),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["motion"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "motion"]},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = _inputs(batch, seed=batch)
        (onnx_motion,) = session.run(["motion"], {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
        with torch.no_grad():
            torch_motion = model(*inputs).numpy()
        assert not np.isnan(onnx_motion).any()
        assert rel_err(onnx_motion, torch_motion) <= 1e-4
