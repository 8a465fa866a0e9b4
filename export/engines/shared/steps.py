"""The shared ensemble step: GFPGAN's output to uint8 faces, the last step of every enhanced render ensemble
(SadTalker's ``render_enhanced``, Wav2Lip's ``wav2lip_render_enhanced``); a stage of
:mod:`export.engines.shared`.

It is exported and checked through the same path as the networks (``export.onnx``), so in the ensembles every
tensor, from the request to the response, passes only through generated, named ONNX graphs.

- :class:`EnhancerOutput` — GFPGAN output → uint8 faces, as ``gateway.media.pasteback.from_enhancer`` rounds.

Rounding: ``torch.round`` and ONNX ``Round`` both round half to even, as numpy's ``rint`` does.
"""

from __future__ import annotations

import torch
from torch import nn


class EnhancerOutput(nn.Module):
    """(B, 3, H, W) float in about [-1, 1] → (B, H, W, 3) uint8, as ``gateway.media.pasteback.from_enhancer``."""

    def forward(self, restored: torch.Tensor) -> torch.Tensor:
        unit = (torch.clamp(restored, -1.0, 1.0) + 1.0) / 2.0
        return torch.round(unit * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
