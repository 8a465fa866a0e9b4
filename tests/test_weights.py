"""Checkpoint plumbing: manifests, synthetic checkpoints in the official layouts, strict loading."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from export.official import OFFICIAL_FILES
from export.synthetic import synthetic_state_dict, synthetic_tensor
from export.weights import (
    MANIFESTED_FILES,
    CheckpointError,
    TensorSpec,
    fold_spectral_norm,
    load_strict,
    read_checkpoint,
    read_manifest,
)


@pytest.mark.parametrize("file_name", MANIFESTED_FILES)
def test_synthetic_checkpoint_has_exactly_the_manifest_layout(
    file_name: str, synthetic_checkpoint: Callable[[str], Path]
) -> None:
    path = synthetic_checkpoint(file_name)
    manifest = read_manifest(file_name)
    key = OFFICIAL_FILES[file_name].pickle_key
    if key is not None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert key in payload
    state = read_checkpoint(path)
    assert set(state) == {t.name for t in manifest.tensors}
    for spec in manifest.tensors:
        tensor = state[spec.name]
        assert tuple(tensor.shape) == spec.shape, spec.name
        assert tensor.dtype == spec.torch_dtype, spec.name
        assert torch.isfinite(tensor.float()).all(), spec.name


def test_synthetic_values_follow_the_golden_rule_by_tensor_kind() -> None:
    var = synthetic_tensor(TensorSpec("bn.running_var", (64,), "float32"), 3)
    mean = synthetic_tensor(TensorSpec("bn.running_mean", (64,), "float32"), 4)
    gain = synthetic_tensor(TensorSpec("bn.weight", (64,), "float32"), 5)
    conv = synthetic_tensor(TensorSpec("conv.weight", (8, 4, 3, 3), "float32"), 6)
    count = synthetic_tensor(TensorSpec("bn.num_batches_tracked", (), "int64"), 7)
    assert var.min() >= 0.75 and var.max() <= 1.25
    assert mean.min() >= -0.1 and mean.max() <= 0.1
    assert gain.min() >= 0.9 and gain.max() <= 1.1
    bound = (3.0 / 36) ** 0.5
    assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
    assert count.dtype == torch.int64 and int(count) == 0
    # The first element of tensor k is frac(sin((1 + 7919 k) · 12.9898) · 43758.5453), here for a bias.
    x = torch.sin(torch.tensor((1.0 + 7919.0 * 9) * 12.9898, dtype=torch.float64)) * 43758.5453
    u = x - torch.floor(x)
    bias = synthetic_tensor(TensorSpec("conv.bias", (2,), "float32"), 9)
    assert float(bias[0]) == pytest.approx(float(0.2 * (u - 0.5)), abs=1e-6)


def test_seed_changes_values_and_seed_zero_is_the_golden_rule() -> None:
    spec = TensorSpec("w", (16, 16), "float32")
    assert not torch.equal(synthetic_tensor(spec, 0, seed=0), synthetic_tensor(spec, 0, seed=1))
    assert torch.equal(synthetic_tensor(spec, 0), synthetic_tensor(spec, 0, seed=0))


def test_synthetic_spectral_vectors_are_consistent_with_their_weight() -> None:
    state = synthetic_state_dict(read_manifest("SadTalker_V0.0.2_256.safetensors"), prefix="generator.")
    triples = [k[: -len("_orig")] for k in state if k.endswith(".weight_orig")]
    assert len(triples) == 18
    for base in triples:
        w = state[base + "_orig"].double()
        u, v = state[base + "_u"].double(), state[base + "_v"].double()
        wv = w.reshape(w.shape[0], -1) @ v
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(u, wv / wv.norm(), atol=1e-6, rtol=0)


def test_fold_spectral_norm_equals_torch_spectral_norm_in_eval_mode() -> None:
    torch.manual_seed(0)
    conv = nn.utils.spectral_norm(nn.Conv2d(4, 6, 3))
    conv.train()
    conv(torch.randn(1, 4, 8, 8))  # one power iteration updates u and v
    conv.eval()
    expected = conv.weight.detach().clone()
    folded = fold_spectral_norm(conv.state_dict())
    assert set(folded) == {"weight", "bias"}
    torch.testing.assert_close(folded["weight"], expected, rtol=1e-6, atol=1e-7)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def _tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _Tiny().state_dict().items()}


def test_load_strict_accepts_the_exact_layout_and_the_ignored_extras() -> None:
    state = _tiny_state()
    state["discriminator.weight"] = torch.zeros(1)
    module = _Tiny()
    load_strict(module, state, source="tiny.pth", ignored={"discriminator.weight"})
    torch.testing.assert_close(module.fc.weight, state["fc.weight"])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("fc.bias"), "missing tensors: fc.bias"),
        (lambda s: s.__setitem__("fc.extra", torch.zeros(1)), "unexpected tensors: fc.extra"),
        (lambda s: s.__setitem__("fc.weight", torch.zeros(2, 4)), "fc.weight has shape (2, 4) in the file"),
    ],
)
def test_load_strict_names_the_file_and_the_tensor(edit: Callable[[dict], object], expected: str) -> None:
    state = _tiny_state()
    edit(state)
    with pytest.raises(CheckpointError, match=r"tiny\.pth") as excinfo:
        load_strict(_Tiny(), state, source="tiny.pth")
    assert expected in str(excinfo.value)


def test_read_checkpoint_reports_missing_files_and_unknown_pickles(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "GFPGANv1.4.pth")
    bad = tmp_path / "odd.pth"
    torch.save({"model": {}, "epoch": 3}, bad)
    with pytest.raises(CheckpointError, match=r"odd\.pth.*state_dict\) is present; found \['epoch', 'model'\]"):
        read_checkpoint(bad)


def test_read_checkpoint_names_the_top_level_entries_it_ignores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trained.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "global_step": 7}, path)
    with caplog.at_level(logging.INFO, logger="export.weights"):
        state = read_checkpoint(path)
    assert set(state) == {"w"}
    assert "trained.pth: using the tensors under 'state_dict'; ignoring top-level global_step, optimizer" in caplog.text


def test_synthetic_checkpoints_are_never_taken_for_official_ones(
    synthetic_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from export.stages import Variant
    from export.weights import is_synthetic

    for name in ("SadTalker_V0.0.2_256.safetensors", "mapping_00229-model.pth.tar", "wav2lip_gan.pth"):
        assert is_synthetic(synthetic_checkpoint(name))
    directory = synthetic_checkpoint("mapping_00229-model.pth.tar").parent
    assert str(Variant(directory).describe()["weights"]).startswith("SYNTHETIC")
    # A file without the marker (as upstream's files are) counts as official.
    unmarked = tmp_path / "mapping_00229-model.pth.tar"
    torch.save({"mapping": read_checkpoint(synthetic_checkpoint("mapping_00229-model.pth.tar"))}, unmarked)
    assert not is_synthetic(unmarked)
    assert str(Variant(tmp_path).describe()["weights"]).startswith("official")
    assert str(Variant(None).describe()["weights"]).startswith("RANDOM")


def test_in_memory_synthetic_weights_build_the_same_modules_as_the_files(
    synthetic_checkpoint: Callable[[str], Path],
) -> None:
    """export.synthetic.SyntheticWeights (bench/gpu.py: no files, no safetensors) gives a builder the tensors
    `python -m export synthetic` writes, so the modules are the same."""
    from export.stages import BUILDERS, StageFactory, Variant
    from export.synthetic import SyntheticWeights

    file_name = "mapping_00229-model.pth.tar"
    from_files = StageFactory(Variant(synthetic_checkpoint(file_name).parent)).build("mapping")
    weights = SyntheticWeights()
    in_memory = BUILDERS["mapping"](Variant(checkpoints=None), weights)
    for (name, have), (_, want) in zip(in_memory.state_dict().items(), from_files.state_dict().items(), strict=True):
        assert torch.equal(have, want), name
    state, source = weights.get("SadTalker_V0.0.2_256.safetensors", "audio2exp.")
    assert source.startswith("SYNTHETIC") and state and not any(name.startswith("audio2exp.") for name in state)
    with pytest.raises(ValueError, match="no manifest"):
        weights.get("no_such_file.pth")
