"""MappingNet and the keypoint transformation: a 27-frame window of 3DMM coefficients → driving keypoints.

SadTalker (Zhang et al., CVPR 2023), upstream ``src/facerender/modules/mapping.py`` and
``src/facerender/modules/make_animation.py`` (``headpose_pred_to_degree``, ``get_rotation_matrix``,
``keypoint_transformation``) in OpenTalker/SadTalker, Apache-2.0; the keypoint model is face-vid2vid's
(Wang et al., CVPR 2021).

MappingNet: Conv1d(C → 1024, k 7) then three LeakyReLU(0.1) → Conv1d(k 3, dilation 3) blocks with a centre-cropped
residual (27 → 21 → 15 → 9 → 3 time steps), a mean over time, and five linear heads: yaw/pitch/roll logits over
66 bins, translation (3) and 45 keypoint offsets. C is 70 (``mapping_00229``: exp 64 | pose 6) or 73
(``mapping_00109``: plus crop 3, for the ``full`` paste-back mode).

Keypoint transformation, as upstream computes it: degrees = Σ softmax(logits)·bin·3 − 99; radians use 3.14
(not π); R = R_pitch·R_yaw·R_roll; kp = kp_canonical·Rᵀ + (0, t_y, 0) + exp — upstream zeroes t_x and t_z
(in place on the head output; the ``t`` returned here is the raw head output).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from export.weights import StateDict, load_strict


@dataclass(frozen=True)
class MappingConfig:
    """Upstream ``facerender*.yaml`` ``mapping_params``."""

    coeff_nc: int
    descriptor_nc: int = 1024
    layers: int = 3
    num_kp: int = 15
    num_bins: int = 66
    window: int = 27  # frames per input window (radius 13); the convolutions shrink it to 3


class MappingNet(nn.Module):
    """forward(window (N, C, 27)) → (yaw, pitch, roll (N, 66) logits, t (N, 3), exp (N, 45))."""

    def __init__(self, config: MappingConfig) -> None:
        super().__init__()
        if config.window - 6 - 6 * config.layers < 1:
            raise ValueError(f"a window of {config.window} frames is too short for {config.layers} layers")
        self.config = config
        width = config.descriptor_nc
        self.first = nn.Sequential(nn.Conv1d(config.coeff_nc, width, kernel_size=7, padding=0, bias=True))
        for i in range(config.layers):  # upstream's names: encoder0, encoder1, …
            block = nn.Sequential(nn.LeakyReLU(0.1), nn.Conv1d(width, width, kernel_size=3, padding=0, dilation=3))
            self.add_module(f"encoder{i}", block)
        self.fc_roll = nn.Linear(width, config.num_bins)
        self.fc_pitch = nn.Linear(width, config.num_bins)
        self.fc_yaw = nn.Linear(width, config.num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * config.num_kp)

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.first(window)
        for i in range(self.config.layers):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]  # a dilated k=3 conv drops 3 steps at each end
        out = out.mean(dim=-1)  # AdaptiveAvgPool1d(1)
        return self.fc_yaw(out), self.fc_pitch(out), self.fc_roll(out), self.fc_t(out), self.fc_exp(out)


def headpose_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(N, 66) bin logits → (N,) degrees: the softmax expectation of the bin index, ×3 − 99."""
    bins = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return (torch.softmax(logits, dim=1) * bins).sum(dim=1) * 3 - 99


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(N,) degrees each → (N, 3, 3) = R_pitch · R_yaw · R_roll, converting with 3.14 as upstream does."""
    yaw, pitch, roll = (a / 180 * 3.14 for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=1).reshape(-1, 3, 3)

    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cr, sr = torch.cos(roll), torch.sin(roll)
    r_pitch = matrix(one, zero, zero, zero, cp, -sp, zero, sp, cp)
    r_yaw = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    r_roll = matrix(cr, -sr, zero, sr, cr, zero, zero, zero, one)
    return r_pitch @ r_yaw @ r_roll


def transform_keypoints(
    kp_canonical: torch.Tensor,
    yaw: torch.Tensor,
    pitch: torch.Tensor,
    roll: torch.Tensor,
    t: torch.Tensor,
    exp: torch.Tensor,
) -> torch.Tensor:
    """Upstream ``keypoint_transformation``: rotate (N, K, 3) canonical keypoints, add t_y and the offsets."""
    rot = rotation_matrix(headpose_to_degrees(yaw), headpose_to_degrees(pitch), headpose_to_degrees(roll))
    rotated = kp_canonical @ rot.transpose(1, 2)
    only_y = torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:2], torch.zeros_like(t[:, 2:])], dim=1)
    return rotated + only_y.unsqueeze(1) + exp.reshape(exp.shape[0], -1, 3)


class MappingWithTransform(nn.Module):
    """Export wrapper: forward(window (N, C, 27), kp_canonical (N, 15, 3)) → kp_driving (N, 15, 3).

    Fed the source frame's window it gives ``kp_source``; fed a driving window, ``kp_driving``.
    """

    def __init__(self, mapping: MappingNet) -> None:
        super().__init__()
        self.mapping = mapping

    def forward(self, window: torch.Tensor, kp_canonical: torch.Tensor) -> torch.Tensor:
        yaw, pitch, roll, t, exp = self.mapping(window)
        return transform_keypoints(kp_canonical, yaw, pitch, roll, t, exp)


# --------------------------------------------------------------------------- checkpoint filter

# Every tensor of mapping_00229 / mapping_00109 (under the pickle key ``mapping``) is used: nothing is dropped.
UNUSED_PREFIXES: tuple[str, ...] = ()


def convert_state_dict(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Official mapping tensors → this module's state dict (the names are identical)."""
    return dict(official)


# --------------------------------------------------------------------------- configurations

FULL_70 = MappingConfig(coeff_nc=70)  # mapping_00229-model.pth.tar (facerender.yaml)
FULL_73 = MappingConfig(coeff_nc=73)  # mapping_00109-model.pth.tar (facerender_still.yaml, `full` mode)
FULL_256 = FULL_70
REDUCED = MappingConfig(coeff_nc=70, descriptor_nc=32)
CONFIG_FOR_FILE: dict[str, MappingConfig] = {
    "mapping_00229-model.pth.tar": FULL_70,
    "mapping_00109-model.pth.tar": FULL_73,
}


def load_mapping(
    official_stripped: Mapping[str, torch.Tensor],
    config: MappingConfig = FULL_70,
    source: str = "mapping_00229-model.pth.tar [mapping]",
) -> MappingNet:
    """Build MappingNet, convert the official tensors, load them strictly, switch to eval mode."""
    module = MappingNet(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()


def load_mapping_with_transform(
    official_stripped: Mapping[str, torch.Tensor],
    config: MappingConfig = FULL_70,
    source: str = "mapping_00229-model.pth.tar [mapping]",
) -> MappingWithTransform:
    """The export wrapper around a strictly loaded MappingNet, in eval mode."""
    return MappingWithTransform(load_mapping(official_stripped, config, source)).eval()
