"""Audio2Exp: one 80×16 mel window + the source expression + a blink ratio → 64 expression coefficients.

SadTalker (Zhang et al., "SadTalker: Learning Realistic 3D Motion Coefficients for Stylized Audio-Driven Single
Image Talking Face Animation", CVPR 2023), upstream ``src/audio2exp_models/networks.py`` (``SimpleWrapperV2``)
and ``audio2exp.py`` in OpenTalker/SadTalker, Apache-2.0. The audio encoder is Wav2Lip's (Prajwal et al. 2020).

Per video frame: a 13-layer conv encoder (80×16 → 512×1×1, BatchNorm in eval mode, residual blocks) and
``Linear(512 + 64 + 1 → 64)`` over ``[audio | source exp | blink ratio]``. Upstream's ``test()`` only loops over
chunks of 10 frames, which changes nothing per frame, so the batch axis here is simply the video frames.
The audio encoder (``export.layers.make_audio_encoder``) is shared with Audio2Pose and Wav2Lip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from export.layers import make_audio_encoder
from export.weights import StateDict, load_strict


@dataclass(frozen=True)
class Audio2ExpConfig:
    """Widths of the audio encoder stages; the expression size is fixed by the 3DMM (64)."""

    encoder_channels: tuple[int, int, int, int, int]
    exp_dim: int = 64


class Audio2Exp(nn.Module):
    """forward(mel (N, 1, 80, 16), ref_exp (N, 64), ratio (N, 1)) → exp (N, 64); N = video frames."""

    def __init__(self, config: Audio2ExpConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = make_audio_encoder(config.encoder_channels)
        self.mapping1 = nn.Linear(config.encoder_channels[-1] + config.exp_dim + 1, config.exp_dim)

    def forward(self, mel: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        audio = self.audio_encoder(mel).flatten(1)
        return self.mapping1(torch.cat([audio, ref_exp, ratio], dim=1))


# --------------------------------------------------------------------------- checkpoint filter

# Every tensor under ``audio2exp.`` in SadTalker_V0.0.2_256.safetensors is used (audio_encoder.* and mapping1.*;
# upstream's commented-out ``mapping2`` was never saved): nothing is dropped.
UNUSED_PREFIXES: tuple[str, ...] = ()


def convert_state_dict(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Prefix-stripped official ``audio2exp.*`` tensors → this module's state dict (the names are identical)."""
    return dict(official)


# --------------------------------------------------------------------------- configurations

FULL_256 = Audio2ExpConfig(encoder_channels=(32, 64, 128, 256, 512))
FULL_512 = FULL_256  # the 512 checkpoint carries the same audio2exp tensors
REDUCED = Audio2ExpConfig(encoder_channels=(4, 8, 8, 16, 16))


def load_audio2exp(
    official_stripped: Mapping[str, torch.Tensor],
    config: Audio2ExpConfig = FULL_256,
    source: str = "SadTalker_V0.0.2_256.safetensors [audio2exp.]",
) -> Audio2Exp:
    """Build Audio2Exp, convert the official tensors, load them strictly, switch to eval mode."""
    module = Audio2Exp(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
