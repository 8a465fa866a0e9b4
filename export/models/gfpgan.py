"""GFPGAN v1.4 face restoration (``GFPGANv1Clean``): a U-Net encoder whose features steer a StyleGAN2 decoder.

Paper: Wang et al., "Towards Real-World Blind Face Restoration with Generative Facial Prior" (CVPR 2021).
Upstream: TencentARC/GFPGAN 1.3.8, ``gfpgan/archs/gfpganv1_clean_arch.py`` and ``stylegan2_clean_arch.py``
(the "clean" arch without compiled CUDA ops), weights ``GFPGANv1.4.pth`` key ``params_ema``.
Licence: Apache-2.0 (GFPGAN); the StyleGAN2 decoder follows rosinality/stylegan2-pytorch (MIT), itself a port of
NVIDIA's StyleGAN2 (whose own licence covers NVIDIA's code, not this re-implementation).

Inference path only, as upstream's ``forward(x, return_rgb=False, randomize_noise=False)`` with
``input_is_latent=True`` (how ``GFPGANer`` builds v1.4): image (N,3,512,512) in [-1,1] → restored (N,3,512,512),
roughly in [-1,1] but NOT clamped (upstream clamps only when converting to uint8 outside the network).

Differences from upstream, all exact in real arithmetic:
- Modulated convolution in batch-friendly form: scale input channels by the style, convolve with the one shared
  weight, scale output channels by the demodulation factor. Upstream builds a weight per sample and convolves
  with ``groups=batch``, which pins the batch size in an exported graph.
- Noise: the stored ``noises.noise{i}`` buffers are the noise (fixed, broadcast over the batch), i.e. upstream's
  ``randomize_noise=False``. Upstream's ``GFPGANer.enhance`` leaves ``randomize_noise=True`` (fresh N(0,1) noise
  per call); we trade that for a deterministic, batch-independent function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.weights import StateDict, load_strict

_SLOPE = 0.2


def _resize(x: Tensor, scale: float) -> Tensor:
    """Upstream's resampling everywhere: bilinear, align_corners=False, by a scale factor (2 or 0.5)."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """U-Net block: conv → resample → conv, plus a resampled 1×1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        out = _resize(F.leaky_relu(self.conv1(x), _SLOPE), self.scale)
        out = F.leaky_relu(self.conv2(out), _SLOPE)
        return out + self.skip(_resize(x, self.scale))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (no bias), in the batch-friendly exact form.

    With per-sample style s (from ``modulation``) and shared weight W, upstream convolves with
    W'[n,o,i] = W[o,i]·s[n,i]·d[n,o], d[n,o] = (Σ_{i,k} (W[o,i,k]·s[n,i])² + eps)^-½. Because s scales input
    channels and d scales output channels, conv(x, W') = d · conv(s·x, W): one ordinary convolution for the whole
    batch. The optional ×2 upsampling of the input commutes with the channel scaling, so it follows it (4× fewer
    multiplications).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool,
        upsample: bool,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.modulation = nn.Linear(num_style_feat, in_channels)
        # Upstream stores a leading singleton axis (the per-sample weight broadcast axis); kept for the names/shapes.
        self.weight = nn.Parameter(torch.empty(1, out_channels, in_channels, kernel_size, kernel_size))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_channels * kernel_size**2))
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.padding = kernel_size // 2

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        scale_in = self.modulation(style)  # (N, C_in)
        weight = self.weight[0]
        x = x * scale_in[:, :, None, None]
        if self.upsample:
            x = _resize(x, 2.0)
        out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # Σ_{i,k} (W[o,i,k] s[n,i])² = Σ_i s[n,i]² · Σ_k W[o,i,k]²  → an (N, C_in) × (C_in, C_out) product.
            energy = scale_in.square() @ weight.square().sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + self.eps)[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated 3×3 conv, ×√2 gain, scaled noise, bias, leaky ReLU (upstream's order)."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, 3, num_style_feat, demodulate=True, upsample=upsample
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        out = self.modulated_conv(x, style) * math.sqrt(2.0)
        out = out + self.weight * noise + self.bias
        return F.leaky_relu(out, _SLOPE)


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB (no demodulation) plus bias, added to the ×2-upsampled previous RGB."""

    def __init__(self, in_channels: int, num_style_feat: int) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False, upsample=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + _resize(skip, 2.0)
        return out


class ConstantInput(nn.Module):
    """The learned 4×4 starting tensor of StyleGAN2, repeated over the batch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, like: Tensor) -> Tensor:
        return self.weight.expand(like.shape[0], -1, -1, -1)


class StyleGAN2DecoderSFT(nn.Module):
    """StyleGAN2 synthesis network whose features are modulated by the U-Net's SFT scale/shift maps.

    Layer l (after the 4×4 conv) at resolution r uses latent index l+1 for its two convolutions in turn and
    the index after for its ToRGB, so consecutive layers share a latent (upstream's indexing).
    """

    def __init__(self, config: GFPGANConfig) -> None:
        super().__init__()
        channels = config.decoder_channels
        log_size = config.log_size
        feat = config.num_style_feat
        self.sft_half = config.sft_half
        self.constant_input = ConstantInput(channels[4])
        self.style_conv1 = StyleConv(channels[4], channels[4], feat, upsample=False)
        self.to_rgb1 = ToRGB(channels[4], feat)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, feat, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, feat, upsample=False))
            self.to_rgbs.append(ToRGB(out_channels, feat))
            in_channels = out_channels
        # Fixed noise maps, one per style conv: 4², then two at each resolution 8² … out_size².
        self.noises = nn.Module()
        for index in range(2 * (log_size - 2) + 1):
            size = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.randn(1, 1, size, size))

    def forward(self, latent: Tensor, conditions: list[tuple[Tensor, Tensor]]) -> Tensor:
        noises = [buffer for _, buffer in self.noises.named_buffers()]  # registration order: noise0, noise1, …
        out = self.style_conv1(self.constant_input(latent), latent[:, 0], noises[0])
        rgb = self.to_rgb1(out, latent[:, 1], None)
        for level, (scale, shift) in enumerate(conditions):
            i = 2 * level + 1
            out = self.style_convs[2 * level](out, latent[:, i], noises[i])
            if self.sft_half:
                # SFT on the second half of the channels only; the first half passes unchanged.
                half = out.shape[1] // 2
                out = torch.cat([out[:, :half], out[:, half:] * scale + shift], dim=1)
            else:
                out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noises[i + 1])
            rgb = self.to_rgbs[level](out, latent[:, i + 2], rgb)
        return rgb


class GFPGAN(nn.Module):
    """GFPGANv1Clean inference: degraded face (N,3,S,S) in [-1,1] → restored face (N,3,S,S), unclamped."""

    def __init__(self, config: GFPGANConfig) -> None:
        super().__init__()
        self.config = config
        unet = config.unet_channels
        log_size = config.log_size
        self.conv_body_first = nn.Conv2d(3, unet[config.out_size], 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet[2**level], unet[2 ** (level - 1)], 0.5) for level in range(log_size, 2, -1)
        )
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            ResBlock(unet[2 ** (level - 1)], unet[2**level], 2.0) for level in range(3, log_size + 1)
        )
        num_codes = config.num_latent if config.different_w else 1
        self.final_linear = nn.Linear(unet[4] * 4 * 4, num_codes * config.num_style_feat)
        self.stylegan_decoder = StyleGAN2DecoderSFT(config)
        # With sft_half the maps cover half the decoder channels, which equals the U-Net width at that level.
        sft_factor = 1 if config.sft_half else 2
        self.condition_scale = nn.ModuleList(
            self._condition_head(unet[2**level], sft_factor) for level in range(3, log_size + 1)
        )
        self.condition_shift = nn.ModuleList(
            self._condition_head(unet[2**level], sft_factor) for level in range(3, log_size + 1)
        )

    @staticmethod
    def _condition_head(channels: int, factor: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.LeakyReLU(_SLOPE),
            nn.Conv2d(channels, channels * factor, 3, 1, 1),
        )

    def forward(self, image: Tensor) -> Tensor:
        feat = F.leaky_relu(self.conv_body_first(image), _SLOPE)
        skips: list[Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), _SLOPE)

        style = self.final_linear(feat.flatten(1))
        feat_dim = self.config.num_style_feat
        if self.config.different_w:
            latent = style.reshape(-1, self.config.num_latent, feat_dim)
        else:
            latent = style[:, None, :].expand(-1, self.config.num_latent, -1)

        conditions: list[tuple[Tensor, Tensor]] = []
        for block, skip, to_scale, to_shift in zip(
            self.conv_body_up, reversed(skips), self.condition_scale, self.condition_shift, strict=True
        ):
            feat = block(feat + skip)
            conditions.append((to_scale(feat), to_shift(feat)))
        return self.stylegan_decoder(latent, conditions)


# Checkpoint filter. Tensors the inference path never reads:
UNUSED_PREFIXES = (
    # U-Net intermediate RGB heads: only used for training losses (upstream return_rgb=True).
    "toRGB.",
    # StyleGAN2 mapping MLP: GFPGANer builds v1.4 with input_is_latent=True, so the U-Net emits W directly.
    "stylegan_decoder.style_mlp.",
)


def convert_state_dict(official: Mapping[str, Tensor]) -> StateDict:
    """Official ``params_ema`` tensors → this module's state dict: the names match; unused heads are dropped."""
    return {name: tensor for name, tensor in official.items() if not name.startswith(UNUSED_PREFIXES)}


@dataclass(frozen=True)
class GFPGANConfig:
    """Architecture sizes, with upstream's meaning (channels = base widths × channel_multiplier × narrow)."""

    out_size: int
    num_style_feat: int
    channel_multiplier: int
    narrow: float
    different_w: bool
    sft_half: bool

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size))

    @property
    def num_latent(self) -> int:
        """Number of W vectors: two per resolution from 4² to out_size², minus two (upstream's count)."""
        return 2 * self.log_size - 2

    @property
    def decoder_channels(self) -> dict[int, int]:
        """StyleGAN2 width per resolution."""
        return _widths(self.channel_multiplier, self.narrow)

    @property
    def unet_channels(self) -> dict[int, int]:
        """U-Net width per resolution: half the decoder's (upstream's ``unet_narrow = narrow * 0.5``)."""
        return _widths(self.channel_multiplier, self.narrow * 0.5)


def _widths(channel_multiplier: int, narrow: float) -> dict[int, int]:
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {res: int(width * (channel_multiplier if res >= 64 else 1) * narrow) for res, width in base.items()}


# v1.4 (and v1.3): out_size 512, channel multiplier 2, 8-layer style MLP (stored, unused), different_w, sft_half.
FULL_512 = GFPGANConfig(
    out_size=512, num_style_feat=512, channel_multiplier=2, narrow=1.0, different_w=True, sft_half=True
)
# Same I/O (512²) and the same layer structure; widths /16 (decoder 64 … 4, U-Net 32 … 2), 32-d styles.
REDUCED = GFPGANConfig(
    out_size=512, num_style_feat=32, channel_multiplier=1, narrow=0.125, different_w=True, sft_half=True
)


def load_gfpgan(
    official_stripped: Mapping[str, Tensor],
    config: GFPGANConfig = FULL_512,
    source: str = "GFPGANv1.4.pth:params_ema",
) -> GFPGAN:
    """Build :class:`GFPGAN`, load the converted official tensors strictly, and put it in eval mode."""
    module = GFPGAN(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
