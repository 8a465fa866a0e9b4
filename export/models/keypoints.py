"""Canonical keypoint detector (``kp_detector``): a 256² face crop → 15 canonical 3-D keypoints.

Paper: Wang et al., "One-Shot Free-View Neural Talking-Head Synthesis for Video Conferencing" (face-vid2vid,
CVPR 2021), as used by Zhang et al., "SadTalker" (CVPR 2023). Upstream: OpenTalker/SadTalker
``src/facerender/modules/keypoint_detector.py`` (``KPDetector``) and ``util.py``; weights under
``kp_extractor.`` in ``SadTalker_V0.0.2_256.safetensors`` (and ``_512``, same layout). Licence: Apache-2.0.

The image is blurred and subsampled ×4 (the Gaussian kernel is a checkpoint tensor), a 2-D encoder and a
3-D decoder give one heatmap volume per keypoint, and each keypoint is the softmax-weighted mean of a
coordinate grid in upstream's ``i/(n-1)·2-1`` convention, ordered (x, y, z). The network is fully
convolutional: any side divisible by 128 works (512² crops for the 512 checkpoint). The jacobian head is
off in SadTalker's config and absent from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from export.layers import AntiAliasDownsample2d, KPHourglass, coordinate_grid_3d
from export.weights import StateDict, load_strict


class KPDetector(nn.Module):
    """(N, 3, H, W) image in [0, 1] → (N, num_kp, 3) canonical keypoints (x, y, z)."""

    def __init__(self, config: KPDetectorConfig) -> None:
        super().__init__()
        self.predictor = KPHourglass(
            config.block_expansion,
            in_features=config.image_channels,
            reshape_features=config.reshape_channels,
            reshape_depth=config.reshape_depth,
            num_blocks=config.num_blocks,
            max_features=config.max_features,
        )
        self.kp = nn.Conv3d(self.predictor.out_filters, config.num_kp, 3, padding=1)
        self.down = AntiAliasDownsample2d(config.image_channels, config.scale_factor)
        self.temperature = config.temperature

    def forward(self, image: Tensor) -> Tensor:
        heatmap = self.kp(self.predictor(self.down(image)))
        _, _, depth, height, width = heatmap.shape
        weights = F.softmax(heatmap.flatten(2) / self.temperature, dim=2)
        grid = coordinate_grid_3d(depth, height, width, heatmap.dtype, heatmap.device).reshape(-1, 3)
        # An explicit product-and-sum, as upstream: a float32 matmul here loses ~1e-5 relative (cancellation).
        return (weights.unsqueeze(-1) * grid).sum(dim=2)


# No tensor of the kp_extractor group is unused: the jacobian head is not in the checkpoint.
UNUSED_PREFIXES: tuple[str, ...] = ()


def convert_state_dict(official: Mapping[str, Tensor]) -> StateDict:
    """Official ``kp_extractor.*`` tensors (prefix stripped) → ``KPDetector`` state dict: names are identical."""
    return {name: tensor for name, tensor in official.items() if not name.startswith(UNUSED_PREFIXES)}


@dataclass(frozen=True)
class KPDetectorConfig:
    """Architecture sizes (upstream ``common_params`` + ``kp_detector_params`` of facerender.yaml)."""

    image_channels: int
    num_kp: int
    block_expansion: int
    max_features: int
    num_blocks: int
    reshape_channels: int  # 1×1 conv width before the 2-D → 3-D reshape: bottleneck width × reshape_depth
    reshape_depth: int
    temperature: float  # softmax temperature of the heatmaps
    scale_factor: float  # input downsampling before the hourglass


FULL_256 = KPDetectorConfig(
    image_channels=3,
    num_kp=15,
    block_expansion=32,
    max_features=1024,
    num_blocks=5,
    reshape_channels=16384,
    reshape_depth=16,
    temperature=0.1,
    scale_factor=0.25,
)
# The 512 checkpoint uses the same config (upstream loads facerender.yaml for both sizes); only the input grows.
REDUCED = KPDetectorConfig(
    image_channels=3,
    num_kp=15,
    block_expansion=4,
    max_features=64,
    num_blocks=5,
    reshape_channels=256,
    reshape_depth=4,
    temperature=0.1,
    scale_factor=0.25,
)


def load_kp_detector(
    official_stripped: Mapping[str, Tensor],
    config: KPDetectorConfig = FULL_256,
    source: str = "SadTalker_V0.0.2_256.safetensors (kp_extractor.)",
) -> KPDetector:
    """Build the detector, convert and strictly load the official tensors, and switch to eval mode."""
    module = KPDetector(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
