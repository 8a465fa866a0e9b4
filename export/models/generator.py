"""Face renderer (``generator``): source crop + source/driving keypoints → the animated 256² face.

Paper: Wang et al., "One-Shot Free-View Neural Talking-Head Synthesis for Video Conferencing" (face-vid2vid,
CVPR 2021) with the SPADE decoder of Zhang et al., "SadTalker" (CVPR 2023). Upstream: OpenTalker/SadTalker
``src/facerender/modules/generator.py`` (``OcclusionAwareSPADEGenerator``, ``SPADEDecoder``),
``dense_motion.py`` (``DenseMotionNetwork``) and ``util.py``; weights under ``generator.`` in
``SadTalker_V0.0.2_256.safetensors`` (and ``_512``: same layout and config, 512² inputs). Licence: Apache-2.0.

Three pieces, each exportable on its own:
- ``SourceEncoder``: portrait → 3-D feature volume (N, 32, 16, H/4, W/4). Depends only on the portrait.
- ``DenseMotionNetwork``: volume + keypoints → a deformation grid and an occlusion map.
- ``SPADEDecoder``: the warped, occlusion-masked 2-D features → image in [0, 1].
``Generator`` chains them (``render`` starts from a cached volume). Upstream's forward takes
(source, kp_driving, kp_source); ours takes (source, kp_source, kp_driving).

Trilinear sampling (``grid_sample``): "5d" is ``F.grid_sample`` on the volume (ONNX GridSample at opset
≥ 20); "4d" computes the same function with one 4-D bilinear GridSample (for TensorRT, whose GridSample is
4-D only): the depth slices are tiled into one image with zero rows and columns between and around them,
each point is sampled bilinearly in its two neighbouring slices, and the two samples are blended linearly in
depth. Zeros padding in depth is a zero weight for an out-of-range slice; within a slice, a point at or
beyond the surrounding zero row/column is masked so it never reads a neighbouring tile. Exact in real
arithmetic (≈1e-14 in float64); in float32 the larger mosaic coordinates round ~4× coarser than the 5-D op's.

Reduced precision (``sampling_precision``): in fp16 a coordinate near the far side of the 4-D form's mosaic
(≈ 4·65 pixels across at full size) rounds to a quarter of a pixel. With ``"fp32"`` the coordinates — the
identity grid, the sparse motions, the blended deformation, the keypoint heatmaps' arithmetic — and the sampling
itself (the 4-D form's mosaic coordinates and depth blend included) are computed in float32 with autocast off,
whatever dtype the convolutions run in; the sampled features go back to the working dtype. ``"native"``
(default) computes them in the dtype of the tensors at hand. In float32 the two are the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.layers import (
    SPADE_LEAKY_SLOPE,
    DownBlock2d,
    Hourglass,
    ResBlock3d,
    SameBlock2d,
    SPADEResBlock,
    coordinate_grid_3d,
)
from export.weights import StateDict, fold_spectral_norm, load_strict

GridSampleForm = Literal["5d", "4d"]
SamplingPrecision = Literal["native", "fp32"]

# Upstream constants: keypoint Gaussian variance for the heatmaps, and motion-mask values below the
# threshold are zeroed before the weighted sum of sparse motions.
KP_VARIANCE = 0.01
MASK_THRESHOLD = 1e-3
# The encoder halves the image twice; the SPADE decoder's two ×2 up blocks undo it.
NUM_DOWN_BLOCKS = 2


def trilinear_sample(
    volume: Tensor, grid: Tensor, form: GridSampleForm, precision: SamplingPrecision = "native"
) -> Tensor:
    """Sample (N, C, D, H, W) at grid (N, Do, Ho, Wo, 3) of (x, y, z) in [-1, 1] → (N, C, Do, Ho, Wo).

    Trilinear, zeros padding, align_corners=False — ``F.grid_sample``'s defaults, as upstream calls it.
    ``precision="fp32"`` samples in float32 with autocast off and returns the volume's dtype.
    """
    if precision == "fp32" and not (volume.dtype == grid.dtype == torch.float32):
        with torch.autocast(volume.device.type, enabled=False):
            return _trilinear(volume.float(), grid.float(), form).to(volume.dtype)
    if precision not in get_args(SamplingPrecision):
        raise ValueError(f"sampling precision must be one of {get_args(SamplingPrecision)}, got {precision!r}")
    return _trilinear(volume, grid, form)


def _trilinear(volume: Tensor, grid: Tensor, form: GridSampleForm) -> Tensor:
    if form == "5d":
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if form == "4d":
        return _trilinear_by_slices(volume, grid)
    raise ValueError(f"grid_sample form must be one of {get_args(GridSampleForm)}, got {form!r}")


def _trilinear_by_slices(volume: Tensor, grid: Tensor) -> Tensor:
    """``trilinear_sample`` with one 4-D bilinear ``grid_sample`` call over depth slices tiled in a mosaic."""
    _, channels, depth, height, width = volume.shape
    _, out_d, out_h, out_w, _ = grid.shape
    # A near-square mosaic of tiles_y × tiles_x slices, each with a zero row above and a zero column to the
    # left, closed by a zero row and column: (N, C, tiles_y·(H+1)+1, tiles_x·(W+1)+1). Near-square keeps the
    # normalised coordinates (and so float rounding in pixels) as small as a 2-D tiling allows.
    tiles_y = math.ceil(math.sqrt(depth))
    tiles_x = math.ceil(depth / tiles_y)
    mosaic = F.pad(volume, (1, 0, 1, 0, 0, tiles_y * tiles_x - depth))
    mosaic = mosaic.reshape(-1, channels, tiles_y, tiles_x, height + 1, width + 1).permute(0, 1, 2, 4, 3, 5)
    mosaic = F.pad(mosaic.reshape(-1, channels, tiles_y * (height + 1), tiles_x * (width + 1)), (0, 1, 0, 1))
    rows, cols = mosaic.shape[2], mosaic.shape[3]

    x, y, z = grid.unbind(dim=-1)
    # Pixel coordinates (align_corners=False) within a slice and along depth.
    ix = ((x + 1) * width - 1) / 2
    iy = ((y + 1) * height - 1) / 2
    iz = ((z + 1) * depth - 1) / 2
    z0 = torch.floor(iz)
    frac = iz - z0
    # At or beyond a slice's surrounding zero row/column (-1 or H, W) a point has no weight on the slice in
    # upstream's sum, but here it could reach a neighbouring tile: mask it. The clamp keeps far-off points
    # (any coordinate is allowed) finite and next to their tile.
    inside = (ix > -1) & (ix < width) & (iy > -1) & (iy < height)
    ix = ix.clamp(-1, width)
    iy = iy.clamp(-1, height)

    grids, weights = [], []
    for k, w_k in ((z0, 1 - frac), (z0 + 1, frac)):
        valid = inside & (k >= 0) & (k <= depth - 1)
        k = k.clamp(0, depth - 1)
        tile_row = torch.floor(k / tiles_x)
        tile_col = k - tile_row * tiles_x
        row = tile_row * (height + 1) + 1 + iy
        col = tile_col * (width + 1) + 1 + ix
        grids.append(torch.stack([(2 * col + 1) / cols - 1, (2 * row + 1) / rows - 1], dim=-1))
        weights.append(torch.where(valid, w_k, torch.zeros_like(w_k)).unsqueeze(1))
    flat_grid = torch.cat(grids, dim=1).reshape(-1, 2 * out_d * out_h, out_w, 2)
    samples = F.grid_sample(mosaic, flat_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.reshape(-1, channels, 2, out_d, out_h, out_w)
    return samples[:, :, 0] * weights[0] + samples[:, :, 1] * weights[1]


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``; no cast (and no Cast node in an exported graph) when it already is."""
    return x if x.dtype == dtype else x.to(dtype)


def _upsample(x: Tensor, factor: int) -> Tensor:
    return F.interpolate(x, scale_factor=float(factor), mode="nearest")


def keypoint_gaussians(kp: Tensor, depth: int, height: int, width: int) -> Tensor:
    """(N, K, 3) keypoints → (N, K, D, H, W) unnormalised Gaussians on upstream's coordinate grid."""
    grid = coordinate_grid_3d(depth, height, width, kp.dtype, kp.device)
    diff = grid - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)


class SourceEncoder(nn.Module):
    """(N, 3, H, W) portrait in [0, 1] → (N, C, D, H/4, W/4) feature volume (C=32, D=16 at full size)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        widths = [min(config.max_features, config.block_expansion * 2**i) for i in range(NUM_DOWN_BLOCKS + 1)]
        self.first = SameBlock2d(config.image_channels, config.block_expansion, kernel_size=3)
        self.down_blocks = nn.ModuleList(DownBlock2d(widths[i], widths[i + 1]) for i in range(NUM_DOWN_BLOCKS))
        self.second = nn.Conv2d(widths[-1], config.max_features, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(config.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(config.feature_channels))
        self.feature_channels = config.feature_channels
        self.reshape_depth = config.reshape_depth

    def forward(self, source_image: Tensor) -> Tensor:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        _, _, height, width = out.shape
        volume = out.reshape(-1, self.feature_channels, self.reshape_depth, height, width)
        return self.resblocks_3d(volume)


class DenseMotionNetwork(nn.Module):
    """Feature volume + keypoints → (deformation (N, D, H, W, 3) in grid_sample coordinates, occlusion (N, 1, H, W)).

    Each keypoint k gives a sparse motion "driving point p came from p - kp_driving[k] + kp_source[k]"
    (plus the identity for the background); an hourglass over the features warped by each of them and the
    keypoint heatmaps predicts a softmax mask that blends the motions, and an occlusion map.
    """

    def __init__(
        self,
        config: GeneratorConfig,
        grid_sample: GridSampleForm = "5d",
        sampling_precision: SamplingPrecision = "native",
    ) -> None:
        super().__init__()
        in_features = (config.num_kp + 1) * (config.dense_compress + 1)
        self.hourglass = Hourglass(
            config.dense_block_expansion, in_features, config.dense_num_blocks, config.dense_max_features
        )
        self.mask = nn.Conv3d(self.hourglass.out_filters, config.num_kp + 1, 7, padding=3)
        self.compress = nn.Conv3d(config.feature_channels, config.dense_compress, 1)
        self.norm = nn.BatchNorm3d(config.dense_compress)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * config.reshape_depth, 1, 7, padding=3)
        self.num_kp = config.num_kp
        self.grid_sample = grid_sample
        self.sampling_precision = sampling_precision

    def forward(self, feature: Tensor, kp_source: Tensor, kp_driving: Tensor) -> tuple[Tensor, Tensor]:
        _, _, depth, height, width = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))
        channels = feature.shape[1]
        parts = self.num_kp + 1
        coordinate_dtype = feature.dtype
        if self.sampling_precision == "fp32":
            coordinate_dtype, kp_source, kp_driving = torch.float32, kp_source.float(), kp_driving.float()

        # Sparse motions (N, K+1, D, H, W, 3): the identity (background), then one per keypoint.
        identity = coordinate_grid_3d(depth, height, width, coordinate_dtype, feature.device)[None, None]
        to_source = identity - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        sparse_motion = torch.cat([identity.expand(to_source.shape[0], 1, -1, -1, -1, -1), to_source], dim=1)

        # The compressed feature warped by each sparse motion: (N, K+1, C, D, H, W).
        repeated = feature.unsqueeze(1).expand(-1, parts, -1, -1, -1, -1).reshape(-1, channels, depth, height, width)
        warped = trilinear_sample(
            repeated, sparse_motion.reshape(-1, depth, height, width, 3), self.grid_sample, self.sampling_precision
        )
        warped = warped.reshape(-1, parts, channels, depth, height, width)

        # Heatmaps: driving minus source Gaussians, a zero map for the background: (N, K+1, 1, D, H, W).
        heatmap = keypoint_gaussians(kp_driving, depth, height, width) - keypoint_gaussians(
            kp_source, depth, height, width
        )
        heatmap = _as(torch.cat([torch.zeros_like(heatmap[:, :1]), heatmap], dim=1).unsqueeze(2), warped.dtype)

        hourglass_in = torch.cat([heatmap, warped], dim=2).reshape(-1, parts * (channels + 1), depth, height, width)
        prediction = self.hourglass(hourglass_in)

        mask = F.softmax(self.mask(prediction), dim=1).unsqueeze(2)
        mask = _as(torch.where(mask < MASK_THRESHOLD, torch.zeros_like(mask), mask), sparse_motion.dtype)
        deformation = (sparse_motion.permute(0, 1, 5, 2, 3, 4) * mask).sum(dim=1).permute(0, 2, 3, 4, 1)

        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(-1, prediction.shape[1] * depth, height, width)))
        return deformation, occlusion


class SPADEDecoder(nn.Module):
    """(N, C, H, W) features (C=256) → (N, 3, 4H, 4W) image in [0, 1]; the input is also the SPADE label map."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        channels = config.block_expansion * 2**NUM_DOWN_BLOCKS
        hidden = config.spade_hidden
        self.fc = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.middle_names = tuple(f"G_middle_{i}" for i in range(config.num_middle_blocks))
        for name in self.middle_names:
            self.add_module(name, SPADEResBlock(2 * channels, 2 * channels, channels, hidden))
        self.up_0 = SPADEResBlock(2 * channels, channels, channels, hidden)
        self.up_1 = SPADEResBlock(channels, config.block_expansion, channels, hidden)
        self.conv_img = nn.Conv2d(config.block_expansion, 3, 3, padding=1)

    def forward(self, feature: Tensor) -> Tensor:
        x = self.fc(feature)
        for name in self.middle_names:
            x = getattr(self, name)(x, feature)
        # The label map at ×2 and ×4: upstream's nearest resize to the block's size, done once per size.
        x = self.up_0(_upsample(x, 2), _upsample(feature, 2))
        x = self.up_1(_upsample(x, 2), _upsample(feature, 4))
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, SPADE_LEAKY_SLOPE)))


class Generator(nn.Module):
    """(source_image (N,3,H,W) in [0,1], kp_source (N,K,3), kp_driving (N,K,3)) → prediction (N,3,H,W) in [0,1].

    H and W must be divisible by 128 (the dense-motion hourglass pools the H/4 volume five times).
    """

    def __init__(
        self,
        config: GeneratorConfig,
        grid_sample: GridSampleForm = "5d",
        sampling_precision: SamplingPrecision = "native",
    ) -> None:
        super().__init__()
        if grid_sample not in get_args(GridSampleForm):
            raise ValueError(f"grid_sample must be one of {get_args(GridSampleForm)}, got {grid_sample!r}")
        if sampling_precision not in get_args(SamplingPrecision):
            raise ValueError(
                f"sampling_precision must be one of {get_args(SamplingPrecision)}, got {sampling_precision!r}"
            )
        self.config = config
        self.source_encoder = SourceEncoder(config)
        self.dense_motion_network = DenseMotionNetwork(config, grid_sample, sampling_precision)
        out_channels = config.block_expansion * 2**NUM_DOWN_BLOCKS
        self.third = SameBlock2d(config.max_features, out_channels, kernel_size=3, leaky=True)
        self.fourth = nn.Conv2d(out_channels, out_channels, 1)
        self.decoder = SPADEDecoder(config)
        self.grid_sample = grid_sample
        self.sampling_precision = sampling_precision

    def copy_with(
        self, grid_sample: GridSampleForm | None = None, sampling_precision: SamplingPrecision | None = None
    ) -> Generator:
        """A copy with the same weights (on the same device, in the same dtype) and other sampler options."""
        reference = next(self.parameters())
        with torch.device("meta"):  # no random initialisation: every tensor comes from the state dict
            copy = Generator(
                self.config, grid_sample or self.grid_sample, sampling_precision or self.sampling_precision
            )
        copy = copy.to_empty(device=reference.device).to(dtype=reference.dtype)
        copy.load_state_dict(self.state_dict())
        return copy.train(self.training)

    def render(self, feature: Tensor, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        """Everything after the source encoder: warp the cached volume, mask occlusions, decode."""
        deformation, occlusion = self.dense_motion_network(feature, kp_source, kp_driving)
        # Upstream resizes the deformation and occlusion map when their size differs from the features';
        # they are computed on the same volume, so it never does.
        out = trilinear_sample(feature, deformation, self.grid_sample, self.sampling_precision)
        _, channels, depth, height, width = out.shape
        out = self.fourth(self.third(out.reshape(-1, channels * depth, height, width)))
        return self.decoder(out * occlusion)

    def forward(self, source_image: Tensor, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        return self.render(self.source_encoder(source_image), kp_source, kp_driving)


class RenderFromFeature(nn.Module):
    """Export wrapper for the per-frame part: (feature volume, kp_source, kp_driving) → prediction."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, feature: Tensor, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        return self.generator.render(feature, kp_source, kp_driving)


# Every tensor of the generator group is used (the discriminator is not in the file).
UNUSED_PREFIXES: tuple[str, ...] = ()
# Upstream keeps the source encoder's layers at the top level; here they live under `source_encoder.`.
_ENCODER_PREFIXES = ("first.", "down_blocks.", "second.", "resblocks_3d.")


def convert_state_dict(official: Mapping[str, Tensor]) -> StateDict:
    """Official ``generator.*`` tensors (prefix stripped) → ``Generator`` state dict.

    Folds the 18 spectral-norm convolutions of the decoder and moves the encoder layers under
    ``source_encoder.``; every other name is unchanged.
    """
    kept = {name: tensor for name, tensor in official.items() if not name.startswith(UNUSED_PREFIXES)}
    return {
        (f"source_encoder.{name}" if name.startswith(_ENCODER_PREFIXES) else name): tensor
        for name, tensor in fold_spectral_norm(kept).items()
    }


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture sizes (upstream ``common_params`` + ``generator_params`` of facerender.yaml; the SPADE
    decoder's widths, hard-coded upstream, follow from ``block_expansion``)."""

    image_channels: int
    num_kp: int
    feature_channels: int  # channels of the 3-D feature volume (upstream feature_channel = reshape_channel)
    reshape_depth: int  # depth of the 3-D feature volume
    block_expansion: int  # width of the first 2-D block; the decoder works at 4× this
    max_features: int  # width before the 2-D → 3-D reshape: feature_channels × reshape_depth
    num_resblocks: int  # 3-D res blocks on the volume
    dense_block_expansion: int
    dense_max_features: int
    dense_num_blocks: int
    dense_compress: int  # channels of the compressed volume the dense-motion net warps
    spade_hidden: int  # hidden width of each SPADE's label-map MLP
    num_middle_blocks: int  # SPADE res blocks at the lowest resolution

    def __post_init__(self) -> None:
        if self.max_features != self.feature_channels * self.reshape_depth:
            raise ValueError(
                f"max_features={self.max_features} must equal feature_channels={self.feature_channels} × "
                f"reshape_depth={self.reshape_depth}"
            )
        if self.reshape_depth < 2:
            raise ValueError(f"reshape_depth must be at least 2 (the coordinate grid divides by D-1), got {self}")


FULL_256 = GeneratorConfig(
    image_channels=3,
    num_kp=15,
    feature_channels=32,
    reshape_depth=16,
    block_expansion=64,
    max_features=512,
    num_resblocks=6,
    dense_block_expansion=32,
    dense_max_features=1024,
    dense_num_blocks=5,
    dense_compress=4,
    spade_hidden=128,
    num_middle_blocks=6,
)
# The 512 checkpoint has the same tensors and upstream uses the same config; only the input size differs.
REDUCED = GeneratorConfig(
    image_channels=3,
    num_kp=15,
    feature_channels=4,
    reshape_depth=4,
    block_expansion=8,
    max_features=16,
    num_resblocks=6,
    dense_block_expansion=4,
    dense_max_features=32,
    dense_num_blocks=5,
    dense_compress=1,
    spade_hidden=8,
    num_middle_blocks=6,
)


def load_generator(
    official_stripped: Mapping[str, Tensor],
    config: GeneratorConfig = FULL_256,
    source: str = "SadTalker_V0.0.2_256.safetensors (generator.)",
    grid_sample: GridSampleForm = "5d",
) -> Generator:
    """Build the generator, convert (fold spectral norm) and strictly load the official tensors, eval mode."""
    module = Generator(config, grid_sample)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
