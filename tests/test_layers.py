"""Shared face-renderer blocks: conventions the checkpoints and the golden fixtures depend on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.layers import (
    AntiAliasDownsample2d,
    Hourglass,
    KPHourglass,
    SPADEResBlock,
    coordinate_grid_3d,
)


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
