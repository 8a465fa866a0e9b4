"""Upstream fidelity of the exported graphs: each stage, exported from golden-rule weights loaded through our
own checkpoint path (a synthetic official file on disk → StageFactory), reproduces ``tests/golden/`` in ONNX
Runtime within the tolerances of ``golden/README.md``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR

from export.engines import STAGES
from export.onnx import TRACE_SIZES, export_stage, opset_for
from export.onnx import relative_error as rel_err
from export.stages import StageFactory, Variant
from lipsync.audio import padded_signal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def factory(synthetic_checkpoint: Callable[[str], Path]) -> StageFactory:
    for name in (
        "SadTalker_V0.0.2_256.safetensors",
        "mapping_00229-model.pth.tar",
        "mapping_00109-model.pth.tar",
        "wav2lip_gan.pth",
    ):
        directory = synthetic_checkpoint(name).parent
    return StageFactory(Variant(directory))


def _golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def _run(factory: StageFactory, stage: str, tmp_path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = export_stage(STAGES[stage], factory.build(stage), tmp_path / f"{stage}.onnx", sizes=TRACE_SIZES)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


CASES = {
    # stage: (fixture, inputs from the fixture, the output's fixture key, tolerance)
    "mel": ("mel", lambda g: {"signal": padded_signal(g["wav"])[None]}, lambda out: out[0][0], "mel", 1e-5),
    "audio2exp": (
        "audio2exp",
        lambda g: {"mel": g["mel"], "ref_exp": g["ref_exp"][0], "ratio": g["ratio"][0]},
        lambda out: out[0][None],
        "exp",
        1e-5,
    ),
    "audio2pose": (
        "audio2pose",
        lambda g: {"mels": g["mels"], "z": g["z"], "pose_style": g["pose_style"], "ref_pose": g["ref_pose"]},
        lambda out: out[0],
        "motion",
        1e-5,
    ),
    "mapping": (
        "mapping",
        lambda g: {"window": g["window"], "kp_canonical": g["kp_canonical"]},
        lambda out: out[0],
        "kp",
        1e-5,
    ),
    "mapping_full": (
        "mapping_still",
        lambda g: {"window": g["window"], "kp_canonical": g["kp_canonical"]},
        lambda out: out[0],
        "kp",
        1e-5,
    ),
    "kp_detector": ("kp_detector", lambda g: {"image": g["image"]}, lambda out: out[0], "kp", 1e-5),
    "face_recon": ("face_recon", lambda g: {"image": g["image"]}, lambda out: out[0], "coeffs", 1e-5),
    "wav2lip": (
        "wav2lip",
        lambda g: {"mel_window": g["mel_windows"], "face": g["face_input"]},
        lambda out: out[0],
        "prediction",
        1e-5,
    ),
}


@pytest.mark.parametrize("stage", list(CASES))
def test_exported_stage_reproduces_upstream(stage: str, factory: StageFactory, tmp_path: Path) -> None:
    fixture, inputs, pick, key, tolerance = CASES[stage]
    golden = _golden(fixture)
    got = pick(_run(factory, stage, tmp_path, inputs(golden)))
    assert got.shape == golden[key].shape
    assert rel_err(got, golden[key]) <= tolerance


@pytest.mark.parametrize("form", ["5d", "4d"])
def test_exported_generator_reproduces_upstream(
    form: str, synthetic_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    # The fixture is 128² (the network is fully convolutional); export at that size.
    directory = synthetic_checkpoint("SadTalker_V0.0.2_256.safetensors").parent
    module = StageFactory(Variant(directory, grid_sample=form)).build("generator")  # type: ignore[arg-type]
    golden = _golden("generator")
    args = tuple(torch.from_numpy(golden[k]) for k in ("image", "kp_source", "kp_driving"))
    path = tmp_path / "generator.onnx"
    names = [t.name for t in STAGES["generator"].inputs]
    torch.onnx.export(
        module, args, str(path), dynamo=False, opset_version=opset_for("generator", form), input_names=names
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (prediction,) = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    # 1e-4 for the generator (golden/README.md); the 4-D form adds ≈ 1e-5 of float32 rounding (test_generator).
    assert rel_err(prediction, golden["prediction"]) <= 1e-4
