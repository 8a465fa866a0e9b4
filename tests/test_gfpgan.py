"""GFPGAN v1.4: golden fidelity, modulated-conv equivalence, checkpoint layout and errors, batching, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from golden_data import GOLDEN_DIR

from export.models.gfpgan import (
    FULL_512,
    GFPGAN,
    REDUCED,
    UNUSED_PREFIXES,
    GFPGANConfig,
    ModulatedConv2d,
    convert_state_dict,
    load_gfpgan,
)
from export.onnx import relative_error as rel_err
from export.synthetic import synthetic_state_dict
from export.weights import CheckpointError, StateDict, read_manifest

FILE = "GFPGANv1.4.pth"


def grouped_modulated_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Upstream's per-sample form: build one modulated (and demodulated) weight per sample, convolve with
    ``groups=batch`` on the batch folded into channels, upsample the input first when asked."""
    n, c = x.shape[:2]
    weight = conv.weight * conv.modulation(style).view(n, 1, c, 1, 1)  # (n, c_out, c_in, k, k)
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + conv.eps).view(n, -1, 1, 1, 1)
    k = weight.shape[-1]
    if conv.upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    out = F.conv2d(x.reshape(1, n * c, *x.shape[2:]), weight.reshape(-1, c, k, k), padding=k // 2, groups=n)
    return out.view(n, -1, *out.shape[2:])


def reduced_model(seed: int = 0, config: GFPGANConfig = REDUCED) -> GFPGAN:
    """Seeded random REDUCED model with non-zero noise strengths and biases (zero at upstream init)."""
    torch.manual_seed(seed)
    model = GFPGAN(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (name.endswith(".weight") and param.ndim == 1) or (name.endswith(".bias") and param.ndim == 4):
                param.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def golden_weights() -> StateDict:
    return synthetic_state_dict(read_manifest(FILE))


@pytest.fixture(scope="module")
def full_model(golden_weights: StateDict) -> GFPGAN:
    return load_gfpgan(golden_weights)


def test_golden(full_model: GFPGAN) -> None:
    fixture = np.load(GOLDEN_DIR / "gfpgan.npz")
    with torch.no_grad():
        restored = full_model(torch.from_numpy(fixture["image"]))
    assert restored.shape == (1, 3, 512, 512)
    assert rel_err(restored, fixture["restored"]) <= 1e-4
    # Upstream does not clamp inside the network; these weights drive it well outside [-1, 1].
    assert restored.min() < -1.5


def test_full_layout_matches_manifest() -> None:
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in GFPGAN(FULL_512).state_dict().items()}
    official = {t.name: t.shape for t in read_manifest(FILE).tensors}
    used = {k: v for k, v in official.items() if not k.startswith(UNUSED_PREFIXES)}
    assert ours == used
    # The filter drops exactly the explicitly unused heads, and only those.
    assert len(official) - len(used) == 2 * 7 + 2 * 8


@pytest.mark.parametrize(("demodulate", "upsample", "kernel"), [(True, False, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_matches_grouped_form(demodulate: bool, upsample: bool, kernel: int) -> None:
    gen = torch.Generator().manual_seed(7)
    conv = ModulatedConv2d(24, 16, kernel, 32, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.modulation.weight.copy_(torch.randn(conv.modulation.weight.shape, generator=gen) / 32**0.5)
        conv.modulation.bias.copy_(1.0 + 0.3 * torch.randn(24, generator=gen))
        x = torch.randn(3, 24, 9, 9, generator=gen)
        style = torch.randn(3, 32, generator=gen) * torch.tensor([[0.1], [1.0], [5.0]])
        ours = conv(x, style)
        upstream = grouped_modulated_conv(conv, x, style)
    assert ours.shape == (3, 16, 18 if upsample else 9, 18 if upsample else 9)
    assert rel_err(ours, upstream) <= 1e-5
    for i in range(3):  # and per sample, so a loud sample cannot hide a quiet one
        assert rel_err(ours[i], upstream[i]) <= 1e-5


def test_renamed_tensor_is_named() -> None:
    official = reduced_model().state_dict()
    official["stylegan_decoder.style_convs.3.modulated_conv.weights"] = official.pop(
        "stylegan_decoder.style_convs.3.modulated_conv.weight"
    )
    with pytest.raises(CheckpointError, match=r"style_convs\.3\.modulated_conv\.weight\b") as info:
        load_gfpgan(official, REDUCED)
    assert "style_convs.3.modulated_conv.weights" in str(info.value)


def test_changed_shape_is_named() -> None:
    official = reduced_model().state_dict()
    official["condition_shift.2.2.weight"] = torch.zeros(5, 16, 3, 3)
    with pytest.raises(CheckpointError, match=r"condition_shift\.2\.2\.weight.*\(5, 16, 3, 3\)"):
        load_gfpgan(official, REDUCED)


def test_unused_tensors_dropped_others_reported() -> None:
    official = reduced_model().state_dict()
    official["toRGB.0.weight"] = torch.zeros(3, 32, 1, 1)
    official["stylegan_decoder.style_mlp.1.weight"] = torch.zeros(32, 32)
    assert set(convert_state_dict(official)) == set(reduced_model().state_dict())
    load_gfpgan(official, REDUCED)
    official["stylegan_decoder.mean_latent"] = torch.zeros(1, 32)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: stylegan_decoder\.mean_latent"):
        load_gfpgan(official, REDUCED)


def test_batch_independence() -> None:
    model = reduced_model()
    images = torch.rand(3, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        batched = model(images)
        single = torch.cat([model(images[i : i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


@pytest.mark.parametrize(
    "config",
    [
        REDUCED,
        GFPGANConfig(
            out_size=256, num_style_feat=16, channel_multiplier=1, narrow=0.125, different_w=False, sft_half=False
        ),
    ],
    ids=["reduced", "reduced-256-shared-w-full-sft"],
)
def test_shapes(config: GFPGANConfig) -> None:
    model = reduced_model(config=config)
    size = config.out_size
    with torch.no_grad():
        restored = model(torch.rand(2, 3, size, size) * 2 - 1)
    assert restored.shape == (2, 3, size, size)
    assert torch.isfinite(restored).all()


def export_onnx(model: GFPGAN, path: Path) -> None:
    """Legacy-exporter call with a dynamic batch axis (to move into export/onnx.py later)."""
    torch.onnx.export(
        model.eval(),
        (torch.rand(1, 3, 512, 512) * 2 - 1,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["restored"],
        dynamic_axes={"image": {0: "batch"}, "restored": {0: "batch"}},
    )


def check_onnx(model: GFPGAN, path: Path, batches: tuple[int, ...]) -> None:
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["restored"]
    for batch in batches:
        images = torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        (got,) = session.run(["restored"], {"image": images.numpy()})
        with torch.no_grad():
            want = model(images)
        assert got.shape == (batch, 3, 512, 512)
        assert not np.isnan(got).any()
        assert rel_err(got, want) <= 1e-4


def test_onnx_reduced(tmp_path: Path) -> None:
    check_onnx(reduced_model(), tmp_path / "gfpgan.onnx", batches=(1, 4))


@pytest.mark.slow
def test_onnx_full(full_model: GFPGAN, tmp_path: Path) -> None:
    check_onnx(full_model, tmp_path / "gfpgan.onnx", batches=(1,))
