"""Wav2Lip's small graphs that glue its network into Triton ensembles; each is a stage of
:mod:`export.engines.wav2lip`.

They are exported and checked through the same path as the networks (``export.onnx``), so in the ensembles
every tensor, from the request to the response, passes only through generated, named ONNX graphs.

- :class:`Wav2LipToUint8` — ``wav2lip_render``: Wav2Lip's BGR output → RGB uint8 faces, truncated as upstream.
- :class:`Wav2LipEnhancerInput` — ``wav2lip_render_enhanced``: that uint8 face, enlarged to GFPGAN's 512².

``wav2lip_render_enhanced`` ends with the shared ``EnhancerOutput`` (:mod:`export.engines.shared.steps`).
"""

from __future__ import annotations

import torch
from torch import nn


def _wav2lip_levels(prediction: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's BGR output in [0, 1] → RGB integer levels (float), truncated as upstream's ``astype(uint8)``."""
    levels = torch.floor(torch.clamp(prediction, 0.0, 1.0) * 255.0)
    return levels.flip(1)  # BGR → RGB


class Wav2LipToUint8(nn.Module):
    """(B, 3, 96, 96) BGR float in [0, 1] → (B, 96, 96, 3) RGB uint8 (upstream: ``(pred·255).astype(uint8)``)."""

    def forward(self, prediction: torch.Tensor) -> torch.Tensor:
        return _wav2lip_levels(prediction).to(torch.uint8).permute(0, 2, 3, 1)


class Wav2LipEnhancerInput(nn.Module):
    """(B, 3, 96, 96) BGR float in [0, 1] → (B, 3, 512, 512) RGB in [-1, 1]: the uint8 face, enlarged bilinearly.

    Upstream Wav2Lip has no enhancer; this is ours: GFPGAN on the mouth region, at its 512² input size.
    """

    def __init__(self, size: int = 512) -> None:
        super().__init__()
        self.size = size

    def forward(self, prediction: torch.Tensor) -> torch.Tensor:
        unit = _wav2lip_levels(prediction) / 255.0
        enlarged = nn.functional.interpolate(unit, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (enlarged - 0.5) / 0.5
