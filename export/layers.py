"""Shared building blocks; imports no model.

Face renderer (face-vid2vid lineage): upstream OpenTalker/SadTalker ``src/facerender/modules/util.py``
(Apache-2.0), itself derived from the First Order Motion Model / face-vid2vid re-implementations. Upstream's
synchronised batch norm behaves as plain batch norm in eval mode, and its spectral-norm convolutions are plain
convolutions here (the norm is folded into the weight at load).

Wav2Lip's units (Rudrabha/Wav2Lip ``models/conv.py``, non-commercial licence; SadTalker reuses the audio
encoder): :class:`ConvBlock`, :class:`ConvTransposeBlock`, :func:`make_audio_encoder`, and
:func:`fold_batch_norms`, which folds their eval-mode batch norms into the convolutions for export.

Attribute names follow upstream so that checkpoint tensors load by name.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# LeakyReLU slopes: the encoder's `third` block uses PyTorch's default, the SPADE blocks use 0.2.
DEFAULT_LEAKY_SLOPE = 0.01
SPADE_LEAKY_SLOPE = 0.2


def coordinate_grid_3d(depth: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(D, H, W, 3) grid of (x, y, z) in [-1, 1], in upstream's ``2·i/(n-1) - 1`` convention.

    Upstream's ``make_coordinate_grid``. It is not the pixel-centre convention (align_corners=False) that
    ``grid_sample`` uses on the same volumes; the generator keeps that mismatch on purpose, as upstream.
    """

    def axis(n: int) -> Tensor:
        return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class SameBlock2d(nn.Module):
    """Convolution → batch norm → ReLU (or LeakyReLU), spatial size preserved."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, leaky: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.leaky = leaky

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.conv(x))
        return F.leaky_relu(out, DEFAULT_LEAKY_SLOPE) if self.leaky else F.relu(out)


class DownBlock2d(nn.Module):
    """3×3 convolution → batch norm → ReLU → 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(nn.Module):
    """3×3×3 convolution → batch norm → ReLU → average pooling of height and width (depth kept)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest ×2 upsampling of height and width (depth kept) → 3×3×3 convolution → batch norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(out)))


class _ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x)))))), shape preserved."""

    def __init__(self, conv: type[nn.Conv2d | nn.Conv3d], norm: type[nn.BatchNorm2d | nn.BatchNorm3d], features: int):
        super().__init__()
        self.conv1 = conv(features, features, 3, padding=1)
        self.conv2 = conv(features, features, 3, padding=1)
        self.norm1 = norm(features)
        self.norm2 = norm(features)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class ResBlock2d(_ResBlock):
    """Pre-activation residual block on (N, C, H, W)."""

    def __init__(self, features: int) -> None:
        super().__init__(nn.Conv2d, nn.BatchNorm2d, features)


class ResBlock3d(_ResBlock):
    """Pre-activation residual block on (N, C, D, H, W)."""

    def __init__(self, features: int) -> None:
        super().__init__(nn.Conv3d, nn.BatchNorm3d, features)


def _hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2**level)


class HourglassEncoder(nn.Module):
    """3-D U-Net encoder: ``num_blocks`` down blocks; returns the input and every level's output."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        widths = [in_features] + [_hourglass_width(block_expansion, max_features, i + 1) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(widths[i], widths[i + 1]) for i in range(num_blocks))

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """3-D U-Net decoder: up blocks with skip concatenation, then conv → batch norm → ReLU at full size.

    The output has ``block_expansion + in_features`` channels (the last skip is the hourglass input itself).
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            width_in = (1 if level == num_blocks - 1 else 2) * _hourglass_width(
                block_expansion, max_features, level + 1
            )
            blocks.append(UpBlock3d(width_in, _hourglass_width(block_expansion, max_features, level)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[Tensor]) -> Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1]), strict=True):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3-D hourglass (U-Net) that pools height and width only; H and W must be divisible by 2**num_blocks."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class KPHourglass(nn.Module):
    """2-D encoder → 1×1 conv → reshape to a 3-D volume → 3-D up blocks (the keypoint detector's predictor)."""

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        reshape_features: int,
        reshape_depth: int,
        num_blocks: int,
        max_features: int,
    ) -> None:
        super().__init__()
        self.down_blocks = nn.Sequential()
        for i in range(num_blocks):
            width_in = in_features if i == 0 else _hourglass_width(block_expansion, max_features, i)
            self.down_blocks.add_module(
                f"down{i}", DownBlock2d(width_in, _hourglass_width(block_expansion, max_features, i + 1))
            )
        bottleneck = _hourglass_width(block_expansion, max_features, num_blocks)
        if reshape_features != bottleneck * reshape_depth:
            raise ValueError(
                f"reshape_features={reshape_features} must equal {bottleneck} (bottleneck width) × "
                f"reshape_depth={reshape_depth}"
            )
        self.conv = nn.Conv2d(bottleneck, reshape_features, 1)
        self.up_blocks = nn.Sequential()
        for i in range(num_blocks):
            self.up_blocks.add_module(
                f"up{i}",
                UpBlock3d(
                    _hourglass_width(block_expansion, max_features, num_blocks - i),
                    _hourglass_width(block_expansion, max_features, num_blocks - i - 1),
                ),
            )
        self.reshape_depth = reshape_depth
        self.out_filters = _hourglass_width(block_expansion, max_features, 0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(self.down_blocks(x))
        _, channels, height, width = out.shape
        out = out.reshape(-1, channels // self.reshape_depth, self.reshape_depth, height, width)
        return self.up_blocks(out)


class AntiAliasDownsample2d(nn.Module):
    """Gaussian blur then keep every (1/scale)-th pixel: band-limited downsampling by an integer factor.

    The kernel is a buffer named ``weight`` because upstream checkpoints store it; the stored value is loaded.
    Upstream pads by ``kernel_size // 2`` on each side, convolves, then slices ``[::step]``: the same as a
    strided convolution, which is what runs here.
    """

    weight: Tensor

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        step = round(1 / scale)
        if not math.isclose(step * scale, 1.0) or step < 2:
            raise ValueError(f"scale must be 1/k for an integer k >= 2, got {scale}")
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        profile = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = profile[:, None] * profile[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, kernel_size, kernel_size).clone())
        self.step = step
        self.padding = kernel_size // 2
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.step, padding=self.padding, groups=self.channels)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): instance norm, then a per-pixel scale and shift
    predicted from a label map of the input's height and width.

    Upstream nearest-resizes the label map inside every SPADE; here the caller passes it at the right size
    (one resize per resolution instead of one per SPADE, and no shape test in the exported graph).
    """

    def __init__(self, norm_channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_channels, 3, padding=1)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        actv = self.mlp_shared(segmap)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block: two SPADE → LeakyReLU(0.2) → 3×3 conv steps, plus a learned 1×1 shortcut
    (SPADE → conv, no bias) when the width changes. Upstream's spectral norm is folded into the conv weights.
    ``segmap`` must have the height and width of ``x``."""

    def __init__(self, in_channels: int, out_channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        self.conv_0 = nn.Conv2d(in_channels, middle, 3, padding=1)
        self.conv_1 = nn.Conv2d(middle, out_channels, 3, padding=1)
        self.norm_0 = SPADE(in_channels, label_channels, hidden)
        self.norm_1 = SPADE(middle, label_channels, hidden)
        self.conv_s: nn.Conv2d | None = None
        self.norm_s: SPADE | None = None
        if in_channels != out_channels:
            self.conv_s = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.norm_s = SPADE(in_channels, label_channels, hidden)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        shortcut = x
        if self.conv_s is not None and self.norm_s is not None:
            shortcut = self.conv_s(self.norm_s(x, segmap))
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, segmap), SPADE_LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, segmap), SPADE_LEAKY_SLOPE))
        return shortcut + dx


# --------------------------------------------------------------------------- Wav2Lip units


class ConvBlock(nn.Module):
    """Conv2d → BatchNorm2d (→ + input when residual) → ReLU; the names match upstream's ``Conv2d`` wrapper."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d → BatchNorm2d → ReLU; the names match upstream's ``Conv2dTranspose`` wrapper."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def make_audio_encoder(channels: tuple[int, int, int, int, int]) -> nn.Sequential:
    """Wav2Lip's audio encoder: (N, 1, 80, 16) → (N, channels[4], 1, 1).

    Height (mel bands) 80 → 27 → 9 → 3 → 1 and width (time) 16 → 16 → 6 → 3 → 1.
    """
    c1, c2, c3, c4, c5 = channels
    return nn.Sequential(
        ConvBlock(1, c1, 3, 1, 1),
        ConvBlock(c1, c1, 3, 1, 1, residual=True),
        ConvBlock(c1, c1, 3, 1, 1, residual=True),
        ConvBlock(c1, c2, 3, (3, 1), 1),
        ConvBlock(c2, c2, 3, 1, 1, residual=True),
        ConvBlock(c2, c2, 3, 1, 1, residual=True),
        ConvBlock(c2, c3, 3, 3, 1),
        ConvBlock(c3, c3, 3, 1, 1, residual=True),
        ConvBlock(c3, c3, 3, 1, 1, residual=True),
        ConvBlock(c3, c4, 3, (3, 2), 1),
        ConvBlock(c4, c4, 3, 1, 1, residual=True),
        ConvBlock(c4, c5, 3, 1, 0),
        ConvBlock(c5, c5, 1, 1, 0),
    )


def fold_batch_norm(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> nn.Conv2d | nn.ConvTranspose2d:
    """A copy of ``conv`` that computes ``norm(conv(x))`` with ``norm`` in eval mode (its running statistics).

    Per output channel: scale = γ / √(running_var + ε), weight ← weight · scale, bias ← (bias − running_mean) ·
    scale + β, in float64 and cast back once, so the folded convolution is the same affine map (it differs from
    the two-step float32 computation only by rounding).
    """
    if norm.weight is None or norm.bias is None or norm.running_mean is None or norm.running_var is None:
        raise ValueError("fold_batch_norm needs an affine batch norm with running statistics")
    if conv.groups != 1:
        raise ValueError(f"fold_batch_norm supports groups=1 only, got groups={conv.groups}")
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.detach().double() - norm.running_mean.double() * scale
    weight = conv.weight.detach().double()
    # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
    axis = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter((weight * scale.view(axis)).to(conv.weight.dtype))
    folded.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype))
    return folded


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place: every :class:`ConvBlock` / :class:`ConvTransposeBlock` of ``module`` gets its batch norm folded
    into its convolution (``conv_block`` becomes a single convolution). Returns ``module``.

    For export, after loading: the state-dict names change (``…conv_block.1.*`` disappear), and the batch norms
    act as in eval mode from then on, whatever the module's mode.
    """
    for block in module.modules():
        if not isinstance(block, ConvBlock | ConvTransposeBlock) or len(block.conv_block) != 2:
            continue  # not a Wav2Lip unit, or already folded
        conv, norm = block.conv_block
        if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(norm, nn.BatchNorm2d):
            block.conv_block = nn.Sequential(fold_batch_norm(conv, norm))
    return module
