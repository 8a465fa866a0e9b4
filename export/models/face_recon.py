"""3DMM coefficient regressor (``face_recon``): a ResNet-50 that maps an aligned 224² face to 257 coefficients.

Paper: Deng et al., "Accurate 3D Face Reconstruction with Weakly-Supervised Learning: From Single Image to
Image Set" (CVPR-W 2019). Upstream: OpenTalker/SadTalker ``src/face3d/models/networks.py`` (``ReconNetWrapper``,
derived from sicxu/Deep3DFaceRecon_pytorch), weights under ``face_3drecon.`` in
``SadTalker_V0.0.2_256.safetensors``. Licence: Apache-2.0 (SadTalker); Deep3DFaceRecon_pytorch is MIT.

The backbone is the torchvision ResNet-50 layout (stride on the 3×3 convolution of each bottleneck, "v1.5")
without its classifier; seven 1×1 convolutions on the pooled 2048-vector give the coefficient groups, which
are concatenated in checkpoint order. The input is RGB in [0, 1] without mean/std normalisation, as upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from export.weights import StateDict, load_strict

# Coefficient groups in output order: (name, size). "trans" is the union of upstream's (tx, ty) and (tz) heads.
COEFF_GROUPS: tuple[tuple[str, int], ...] = (
    ("id", 80),
    ("exp", 64),
    ("tex", 80),
    ("angle", 3),
    ("gamma", 27),
    ("trans", 3),
)
NUM_COEFFS = sum(size for _, size in COEFF_GROUPS)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride) → 1×1 expand, plus a projected or identity shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNetBackbone(nn.Module):
    """ResNet stem and four bottleneck stages, ending in global average pooling: (N,3,H,W) → (N,C,1,1)."""

    def __init__(self, config: FaceReconConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = config.stem_channels
        stages: list[nn.Sequential] = []
        for index, (depth, width) in enumerate(zip(config.depths, config.widths, strict=True)):
            blocks: list[nn.Module] = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(Bottleneck(in_channels, width, stride))
                in_channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


class FaceRecon(nn.Module):
    """Aligned face (N,3,224,224) in [0,1] → 3DMM coefficients (N,257); see :func:`split_coeffs`."""

    def __init__(self, config: FaceReconConfig) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(config)
        features = config.widths[-1] * Bottleneck.expansion
        # Upstream's head order; tx/ty (2) and tz (1) are separate heads whose outputs are adjacent.
        head_sizes = (80, 64, 80, 3, 27, 2, 1)
        self.final_layers = nn.ModuleList(nn.Conv2d(features, size, 1) for size in head_sizes)

    def forward(self, image: Tensor) -> Tensor:
        pooled = self.backbone(image)
        return torch.cat([head(pooled) for head in self.final_layers], dim=1).flatten(1)


def split_coeffs(coeffs: Tensor) -> dict[str, Tensor]:
    """Name the slices of a (N,257) coefficient tensor.

    Index ranges (end exclusive): id 0:80 (identity shape), exp 80:144 (expression), tex 144:224 (albedo),
    angle 224:227 (pitch, yaw, roll in radians), gamma 227:254 (9 SH bands × RGB lighting),
    trans 254:257 (tx, ty, tz).
    """
    if coeffs.shape[-1] != NUM_COEFFS:
        raise ValueError(f"expected {NUM_COEFFS} coefficients in the last axis, got shape {tuple(coeffs.shape)}")
    parts: dict[str, Tensor] = {}
    start = 0
    for name, size in COEFF_GROUPS:
        parts[name] = coeffs[..., start : start + size]
        start += size
    return parts


# Checkpoint filter: the official names already match the module tree (no classifier ``fc`` is stored).
def convert_state_dict(official: Mapping[str, Tensor]) -> StateDict:
    """Official ``face_3drecon.*`` tensors (prefix stripped) → this module's state dict (identity)."""
    return dict(official)


@dataclass(frozen=True)
class FaceReconConfig:
    """Backbone sizes. The seven heads and the 257-coefficient output are fixed by the 3DMM."""

    stem_channels: int
    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]


FULL_256 = FaceReconConfig(stem_channels=64, depths=(3, 4, 6, 3), widths=(64, 128, 256, 512))
# Same in both SadTalker files; the recon net does not depend on the render size.
FULL_512 = FULL_256
REDUCED = FaceReconConfig(stem_channels=8, depths=(1, 1, 1, 1), widths=(4, 8, 8, 16))


def load_face_recon(
    official_stripped: Mapping[str, Tensor],
    config: FaceReconConfig = FULL_256,
    source: str = "SadTalker_V0.0.2_256.safetensors:face_3drecon.",
) -> FaceRecon:
    """Build :class:`FaceRecon`, load the converted official tensors strictly, and put it in eval mode."""
    module = FaceRecon(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
