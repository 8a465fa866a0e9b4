"""Face renderer: golden fidelity (both sampler forms), 4-D ≡ 5-D sampling, strict loading, batching,
reduced config, the encoder/render split, and ONNX parity (5-D at opset 20, 4-D-only at opset 17)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from golden_data import GOLDEN_DIR
from torch.overrides import TorchFunctionMode

from export.layers import coordinate_grid_3d
from export.models.generator import (
    FULL_256,
    REDUCED,
    Generator,
    GridSampleForm,
    RenderFromFeature,
    convert_state_dict,
    load_generator,
    trilinear_sample,
)
from export.onnx import relative_error as rel_err
from export.precision import cpu_emulation
from export.synthetic import golden_weights
from export.weights import CheckpointError, StateDict

FILE = "SadTalker_V0.0.2_256.safetensors"
PREFIX = "generator."
INPUTS = ("source_image", "kp_source", "kp_driving")
FORMS: tuple[GridSampleForm, ...] = ("5d", "4d")
# Float32 4-D vs 5-D sampling. The mosaic that holds the depth slices is ≈ √D·(H+1) pixels across instead of
# H, so a normalised coordinate's float32 rounding (≈ side · 2⁻²⁴ px) is ≈ 4× coarser at D = 16: the sampler
# alone is ≈ 1.0e-5 relative from float64 on white-noise volumes (5-D: 2.6e-6). Through the whole generator
# (golden-rule weights) the 4-D form is 6.1e-6 (128²) and 1.1e-5 (256²) from float64, upstream's 5-D form
# 4.7e-6 and 7.3e-6: the two differ by about the sum of two independent float32 errors (6.7e-6 and 1.2e-5
# measured). 1e-5 would be tighter than the 5-D form's own rounding at 256²; the bounds leave ≈ 2.5× headroom.
SAMPLER_F32_BOUND = 3e-5
GENERATOR_F32_BOUND = 3e-5


def random_inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A source image in [0, 1] and keypoints spread like real ones (|kp| ≲ 0.7, driving near source)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=gen)
    kp_source = (torch.rand(batch, 15, 3, generator=gen) - 0.5) * 1.2
    kp_driving = kp_source + (torch.rand(batch, 15, 3, generator=gen) - 0.5) * 0.3
    return image, kp_source, kp_driving


def reduced_generator(form: GridSampleForm, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(REDUCED, grid_sample=form).eval()


@pytest.fixture(scope="module")
def official() -> StateDict:
    """The golden-rule tensors of the generator group (spectral-norm triples included), prefix stripped."""
    return golden_weights(FILE, PREFIX)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN_DIR / "generator.npz"))


@pytest.fixture(scope="module")
def golden_outputs(official: StateDict, golden: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The full-size generator on the golden inputs (128²), once per sampler form."""
    args = [torch.from_numpy(golden[k]) for k in ("image", "kp_source", "kp_driving")]
    outputs: dict[str, torch.Tensor] = {}
    for form in FORMS:
        with torch.no_grad():
            outputs[form] = load_generator(official, grid_sample=form)(*args)
    return outputs


@pytest.mark.parametrize("form", FORMS)
def test_golden(golden_outputs: dict[str, torch.Tensor], golden: dict[str, np.ndarray], form: str) -> None:
    prediction = golden_outputs[form]
    assert prediction.shape == (1, 3, 128, 128)
    assert rel_err(prediction, golden["prediction"]) <= 1e-4


def test_4d_matches_5d_float32_on_the_full_generator(golden_outputs: dict[str, torch.Tensor]) -> None:
    assert rel_err(golden_outputs["4d"], golden_outputs["5d"]) <= GENERATOR_F32_BOUND


def _border_grid(depth: int, height: int, width: int) -> torch.Tensor:
    """(1, 8, 9, 9, 3) float64 grid: half of it on and around the zero-padding borders of each axis (pixel
    coordinates -1 and n, where a corner's weight vanishes), half of it random well beyond [-1, 1]."""
    gen = torch.Generator().manual_seed(3)
    coords = []
    for n in (width, height, depth):
        pixels = torch.tensor(
            [-1.5, -1.0, -0.999, -0.5, 0.0, 0.3, n - 1.0, n - 0.5, n - 0.001, float(n), n + 0.5], dtype=torch.float64
        )
        picked = pixels[torch.randint(len(pixels), (4 * 9 * 9,), generator=gen)]
        coords.append((2 * picked + 1) / n - 1)  # inverse of grid_sample's align_corners=False unnormalisation
    border = torch.stack(coords, dim=-1).reshape(1, 4, 9, 9, 3)
    wild = (torch.rand(1, 4, 9, 9, 3, generator=gen, dtype=torch.float64) - 0.5) * 3
    return torch.cat([border, wild], dim=1)


def test_4d_sampler_equals_5d_in_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    for depth, height, width in ((5, 6, 7), (16, 8, 8), (2, 3, 4)):
        volume = torch.randn(2, 3, depth, height, width, generator=gen, dtype=torch.float64)
        grid = torch.cat([_border_grid(depth, height, width)] * 2)
        grid[1] = (torch.rand(8, 9, 9, 3, generator=gen, dtype=torch.float64) - 0.5) * 2.6
        five = trilinear_sample(volume, grid, "5d")
        four = trilinear_sample(volume, grid, "4d")
        assert bool((five == 0).any())  # the border cases are exercised
        assert float((four - five).abs().max()) <= 1e-10 * float(five.abs().max())


def test_4d_sampler_float32_bound() -> None:
    gen = torch.Generator().manual_seed(4)
    volume = torch.randn(1, 32, 16, 64, 64, generator=gen, dtype=torch.float64)
    grid = coordinate_grid_3d(16, 64, 64, torch.float64, torch.device("cpu"))[None]
    grid = grid + 0.1 * torch.randn(grid.shape, generator=gen, dtype=torch.float64)
    exact = trilinear_sample(volume, grid, "5d")
    five = trilinear_sample(volume.float(), grid.float(), "5d")
    four = trilinear_sample(volume.float(), grid.float(), "4d")
    assert rel_err(five, exact) <= SAMPLER_F32_BOUND / 4
    assert rel_err(four, exact) <= SAMPLER_F32_BOUND


def test_4d_generator_equals_5d_in_float64() -> None:
    five = reduced_generator("5d").double()
    four = reduced_generator("4d").double()
    args = [a.double() for a in random_inputs(2, 128)]
    with torch.no_grad():
        assert rel_err(four(*args), five(*args)) <= 1e-10


@pytest.mark.parametrize("form", FORMS)
def test_fp32_sampling_coordinates_change_nothing_in_float32(form: GridSampleForm) -> None:
    """The reduced-precision option is the same computation in float32: default behaviour is untouched."""
    net = reduced_generator(form)
    args = random_inputs(2, 128)
    with torch.no_grad():
        assert torch.equal(net.copy_with(sampling_precision="fp32")(*args), net(*args))


class _SamplerSpy(TorchFunctionMode):
    """Records the (volume, grid) dtypes of every ``grid_sample`` call, then lets the call go on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func is torch.nn.functional.grid_sample:
            self.seen.append((args[0].dtype, args[1].dtype))
        return func(*args, **(kwargs or {}))


def _sampler_dtypes(net: Generator, args: tuple[torch.Tensor, ...]) -> list[tuple[torch.dtype, torch.dtype]]:
    """(volume, grid) dtypes of every grid_sample call while ``net`` runs."""
    # The CPU has no bfloat16 avg_pool3d: export.precision's emulation runs it in float32 and rounds back. The
    # spy is entered last, so it sees each call first.
    with torch.no_grad(), cpu_emulation(torch.device("cpu")), _SamplerSpy() as spy:
        net(*args)
    return spy.seen


@pytest.mark.parametrize("form", FORMS)
def test_fp32_sampling_coordinates_in_a_bfloat16_generator(form: GridSampleForm) -> None:
    """Cast to bfloat16, the default samples in bfloat16; with "fp32" every sample (and its grid) is float32,
    while the convolutions and the output stay bfloat16."""
    net = reduced_generator(form).to(torch.bfloat16)
    args = tuple(a.to(torch.bfloat16) for a in random_inputs(1, 128))
    calls = 2  # the warp by every sparse motion, then the warp of the volume by the deformation
    assert _sampler_dtypes(net, args) == [(torch.bfloat16, torch.bfloat16)] * calls
    fp32 = net.copy_with(sampling_precision="fp32")
    assert _sampler_dtypes(fp32, args) == [(torch.float32, torch.float32)] * calls
    with torch.no_grad(), cpu_emulation(torch.device("cpu")):
        assert fp32(*args).dtype == torch.bfloat16
    assert next(fp32.parameters()).dtype == torch.bfloat16


def test_copy_with_keeps_weights_and_changes_only_the_options() -> None:
    net = reduced_generator("5d").double()
    four = net.copy_with(grid_sample="4d")
    assert (four.grid_sample, four.sampling_precision) == ("4d", "native")
    assert four.dense_motion_network.grid_sample == "4d" and not four.training
    assert next(four.parameters()).dtype == torch.float64
    args = [a.double() for a in random_inputs(1, 128)]
    with torch.no_grad():
        assert rel_err(four(*args), net(*args)) <= 1e-10
    with pytest.raises(ValueError, match="sampling_precision"):
        Generator(REDUCED, "5d", "fp16")  # type: ignore[arg-type]


def test_renamed_tensor_is_named(official: StateDict) -> None:
    broken = dict(official)
    broken["decoder.fc.weightx"] = broken.pop("decoder.fc.weight")
    with pytest.raises(CheckpointError, match=r"decoder\.fc\.weight") as info:
        load_generator(broken)
    assert "decoder.fc.weightx" in str(info.value)


def test_changed_shape_is_named(official: StateDict) -> None:
    broken = dict(official)
    broken["dense_motion_network.occlusion.weight"] = torch.zeros(1, 1791, 7, 7)
    with pytest.raises(CheckpointError, match=r"dense_motion_network\.occlusion\.weight has shape \(1, 1791, 7, 7\)"):
        load_generator(broken)


def test_every_official_tensor_is_used(official: StateDict) -> None:
    module = Generator(FULL_256)
    converted = set(convert_state_dict(official))
    assert converted == set(module.state_dict())
    # 18 spectral-norm convolutions are folded into plain weights.
    assert sum(name.endswith(".weight_orig") for name in official) == 18
    assert not any(name.endswith(("_orig", "_u", "_v")) for name in converted)


@pytest.mark.parametrize("form", FORMS)
def test_batch_independence(form: GridSampleForm) -> None:
    net = reduced_generator(form)
    image, kp_source, kp_driving = random_inputs(3, 128)
    with torch.no_grad():
        batched = net(image, kp_source, kp_driving)
        single = torch.cat([net(image[i : i + 1], kp_source[i : i + 1], kp_driving[i : i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


def test_shapes_full_and_reduced() -> None:
    with torch.device("meta"):
        full = Generator(FULL_256)
        image, kp_source, kp_driving = torch.rand(2, 3, 256, 256), torch.rand(2, 15, 3), torch.rand(2, 15, 3)
        feature = full.source_encoder(image)
        assert feature.shape == (2, 32, 16, 64, 64)
        deformation, occlusion = full.dense_motion_network(feature, kp_source, kp_driving)
        assert deformation.shape == (2, 16, 64, 64, 3)
        assert occlusion.shape == (2, 1, 64, 64)
        assert full.decoder(torch.rand(2, 256, 64, 64)).shape == (2, 3, 256, 256)
        assert full(image, kp_source, kp_driving).shape == (2, 3, 256, 256)
    net = reduced_generator("5d")
    args = random_inputs(2, 256)
    with torch.no_grad():
        assert net.source_encoder(args[0]).shape == (2, 4, 4, 64, 64)
        prediction = net(*args)
    assert prediction.shape == (2, 3, 256, 256)
    assert bool((prediction >= 0).all() and (prediction <= 1).all())


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    input_names: tuple[str, ...] = INPUTS,
    output_names: tuple[str, ...] = ("prediction",),
) -> ort.InferenceSession:
    with warnings.catch_warnings():
        # Static shapes (sizes, tile layout) are traced as constants on purpose; the legacy exporter is asked for.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Instance norm always uses the input's statistics; shape arithmetic on traced sizes is not folded.
        warnings.filterwarnings("ignore", "ONNX export mode is set to TrainingMode.EVAL", UserWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def grid_sample_input_ranks(path: Path) -> list[int]:
    """The rank of the sampled input of every GridSample node, by ONNX shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*model.graph.value_info, *model.graph.input)}
    return [ranks[node.input[0]] for node in model.graph.node if node.op_type == "GridSample"]


@pytest.mark.parametrize(("form", "opset"), [("5d", 20), ("4d", 17)])
def test_onnx_matches_torch(form: GridSampleForm, opset: int, tmp_path: Path) -> None:
    net = reduced_generator(form)
    path = tmp_path / f"generator_{form}.onnx"
    session = export_onnx(net, random_inputs(1, 256), path, opset)
    for batch in (1, 3):
        args = random_inputs(batch, 256, seed=batch)
        (prediction,) = session.run(None, {name: a.numpy() for name, a in zip(INPUTS, args, strict=True)})
        with torch.no_grad():
            ref = net(*args)
        assert prediction.shape == (batch, 3, 256, 256)
        assert not np.isnan(prediction).any()
        assert rel_err(prediction, ref) <= 1e-4
    ranks = grid_sample_input_ranks(path)
    # Two samplings: the compressed volume per keypoint (dense motion) and the feature volume.
    assert len(ranks) == 2
    assert ranks == ([5, 5] if form == "5d" else [4, 4])


def test_split_encoder_and_render_in_onnx(tmp_path: Path) -> None:
    """The cacheable source encoder and the per-frame renderer, exported apart, chain to the whole generator."""
    net = reduced_generator("4d")
    image, kp_source, kp_driving = random_inputs(2, 256)
    encoder = export_onnx(net.source_encoder, (image[:1],), tmp_path / "enc.onnx", 17, ("source_image",), ("feature",))
    render = export_onnx(
        RenderFromFeature(net),
        (net.source_encoder(image[:1]).detach(), kp_source[:1], kp_driving[:1]),
        tmp_path / "render.onnx",
        17,
        ("feature", "kp_source", "kp_driving"),
    )
    (feature,) = encoder.run(None, {"source_image": image.numpy()})
    assert feature.shape == (2, 4, 4, 64, 64)
    (prediction,) = render.run(
        None, {"feature": feature, "kp_source": kp_source.numpy(), "kp_driving": kp_driving.numpy()}
    )
    with torch.no_grad():
        ref = net(image, kp_source, kp_driving)
    assert rel_err(prediction, ref) <= 1e-4


@pytest.mark.slow
def test_full_size_single_frame_torch_and_onnx(official: StateDict, tmp_path: Path) -> None:
    """256², official architecture, golden-rule weights, one frame: 4-D vs 5-D in torch, and the 4-D
    (TensorRT-ready, opset 17) graph in ONNX Runtime."""
    args = random_inputs(1, 256, seed=7)
    nets = {form: load_generator(official, grid_sample=form) for form in FORMS}
    with torch.no_grad():
        outputs = {form: net(*args) for form, net in nets.items()}
    assert rel_err(outputs["4d"], outputs["5d"]) <= GENERATOR_F32_BOUND
    path = tmp_path / "generator_4d_full.onnx"
    session = export_onnx(nets["4d"], args, path, 17)
    del nets
    (prediction,) = session.run(None, {name: a.numpy() for name, a in zip(INPUTS, args, strict=True)})
    assert prediction.shape == (1, 3, 256, 256)
    assert rel_err(prediction, outputs["4d"]) <= 1e-4
    assert grid_sample_input_ranks(path) == [4, 4]
