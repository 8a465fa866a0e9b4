"""Shared blocks: conventions the checkpoints and the golden fixtures depend on, and the batch-norm fold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.layers import (
    AntiAliasDownsample2d,
    ConvBlock,
    ConvTransposeBlock,
    Hourglass,
    KPHourglass,
    SPADEResBlock,
    coordinate_grid_3d,
    fold_batch_norm,
    fold_batch_norms,
    make_audio_encoder,
)
from export.onnx import relative_error


def test_coordinate_grid_is_xyz_in_the_i_over_n_minus_1_convention() -> None:
    grid = coordinate_grid_3d(3, 4, 5, torch.float64, torch.device("cpu"))
    assert grid.shape == (3, 4, 5, 3)
    # (x, y, z) order: x varies along the last axis, z along the first; both ends are exactly ±1.
    torch.testing.assert_close(grid[0, 0, :, 0], torch.linspace(-1, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.tensor([-1, -1 / 3, 1 / 3, 1], dtype=torch.float64))
    torch.testing.assert_close(grid[:, 0, 0, 2], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert grid[-1, -1, -1].tolist() == [1.0, 1.0, 1.0]


def test_antialias_downsample_equals_upstream_pad_conv_slice() -> None:
    down = AntiAliasDownsample2d(channels=3, scale=0.25)
    # Upstream's default kernel: σ = 1.5, 13 taps, normalised; checkpoints overwrite it.
    assert down.weight.shape == (3, 1, 13, 13)
    assert down.weight[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(down.weight[0, 0], down.weight[0, 0].T)
    down.weight.copy_(torch.rand_like(down.weight))  # any kernel: the stored one is what runs
    x = torch.rand(2, 3, 64, 48)
    upstream = F.conv2d(F.pad(x, (6, 6, 6, 6)), down.weight, groups=3)[:, :, ::4, ::4]
    torch.testing.assert_close(down(x), upstream, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        AntiAliasDownsample2d(3, 0.3)


def test_hourglass_keeps_size_and_adds_its_input_channels() -> None:
    net = Hourglass(block_expansion=4, in_features=6, num_blocks=3, max_features=16).eval()
    out = net(torch.rand(2, 6, 3, 16, 24))
    assert out.shape == (2, 4 + 6, 3, 16, 24)
    shapes = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    assert [shapes[f"encoder.down_blocks.{i}.conv.weight"][0] for i in range(3)] == [8, 16, 16]
    assert [shapes[f"decoder.up_blocks.{i}.conv.weight"][1] for i in range(3)] == [16, 32, 16]


def test_kp_hourglass_checks_the_reshape_width() -> None:
    net = KPHourglass(4, in_features=3, reshape_features=16 * 2, reshape_depth=2, num_blocks=2, max_features=64)
    assert net.eval()(torch.rand(1, 3, 16, 16)).shape == (1, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="reshape_features"):
        KPHourglass(4, in_features=3, reshape_features=30, reshape_depth=2, num_blocks=2, max_features=64)


def test_spade_block_names_and_learned_shortcut() -> None:
    same = SPADEResBlock(8, 8, label_channels=5, hidden=4)
    wider = SPADEResBlock(8, 4, label_channels=5, hidden=4)
    assert not any(k.startswith(("conv_s", "norm_s")) for k in same.state_dict())
    names = set(wider.state_dict())
    assert {"conv_s.weight", "norm_s.mlp_shared.0.weight", "norm_0.mlp_gamma.bias", "norm_1.mlp_beta.weight"} <= names
    assert "conv_s.bias" not in names
    x, seg = torch.rand(2, 8, 6, 6), torch.rand(2, 5, 6, 6)
    assert wider.eval()(x, seg).shape == (2, 4, 6, 6)


def _randomise_norm(norm: nn.BatchNorm2d, generator: torch.Generator) -> None:
    """Running statistics and affine parameters far from the identity, so a wrong fold cannot pass."""
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) * 2 + 0.1)
        norm.weight.copy_(torch.randn(norm.num_features, generator=generator))
        norm.bias.copy_(torch.randn(norm.num_features, generator=generator))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(5, 7, 3, stride=2, padding=1),
        nn.Conv2d(5, 7, 1, bias=False),
        nn.ConvTranspose2d(5, 7, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(5, 7, 3, stride=1, padding=0),
    ],
    ids=["conv", "conv-no-bias", "transposed-s2", "transposed-s1"],
)
def test_fold_batch_norm_equals_conv_then_eval_norm(conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
    generator = torch.Generator().manual_seed(0)
    norm = nn.BatchNorm2d(7)
    _randomise_norm(norm, generator)
    reference = nn.Sequential(conv, norm).eval()
    weight_before = conv.weight.detach().clone()
    folded = fold_batch_norm(conv, norm)
    assert type(folded) is type(conv) and folded.bias is not None
    x = torch.randn(2, 5, 9, 11, generator=generator)
    with torch.no_grad():
        want, have = reference(x), folded(x)
    assert have.shape == want.shape
    assert relative_error(have, want) <= 1e-6
    assert torch.equal(conv.weight, weight_before)  # the original convolution is left untouched


def test_fold_batch_norms_folds_every_unit_and_keeps_the_function() -> None:
    generator = torch.Generator().manual_seed(1)
    net = nn.Sequential(
        make_audio_encoder((4, 8, 8, 16, 16)),
        ConvTransposeBlock(16, 8, 3, 1, 0),
        ConvBlock(8, 8, 3, 1, 1, residual=True),
    ).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            _randomise_norm(module, generator)
            module.running_var.abs_().add_(0.5)
    x = torch.randn(3, 1, 80, 16, generator=generator)
    with torch.no_grad():
        want = net(x)
        folded = fold_batch_norms(net)
        have = folded(x)
    assert folded is net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert want.shape == (3, 8, 3, 3)
    assert relative_error(have, want) <= 1e-5
    # Folding twice changes nothing.
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold_batch_norms(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
