"""SadTalker's small graphs that glue its networks into Triton ensembles; each is a stage of
:mod:`export.engines.sadtalker`.

They are exported and checked through the same path as the networks (``export.onnx``), so in the ensembles
every tensor, from the request to the response, passes only through generated, named ONNX graphs.

- :class:`MelWindows` — ``motion``: a span's log-mel (1, T, 80) and per-frame indices (K, 16) → (K, 1, 80, 16).
- :class:`FaceToUint8` — ``render``: generator output → uint8 faces, NHWC.
- :class:`EnhancerInput` — ``render_enhanced``: generator output → GFPGAN input, bit-exact with the gateway's
  ``gateway.media.pasteback.to_enhancer`` applied to the uint8 face (which enlarges with OpenCV).

``render_enhanced`` ends with the shared ``EnhancerOutput`` (:mod:`export.engines.shared.steps`).

Rounding: ``torch.round`` and ONNX ``Round`` both round half to even, as numpy's ``rint`` and scikit-image's
``img_as_ubyte`` (upstream SadTalker's conversion of the generator output) do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MelWindows(nn.Module):
    """Gather each video frame's 16 mel frames: ``windows[k, 0, m, j] = mel[0, index[k, j], m]``.

    The indices are computed by the caller (``lipsync.audio.mel_window_indices``, relative to the span), so
    clamping at the clip's ends stays plain indexing; an index outside the span is an error, not a clamp.
    """

    def forward(self, mel: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        frames = mel[0][index]  # (K, 16, 80)
        return frames.transpose(1, 2).unsqueeze(1)


def _to_uint8_levels(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] → integer levels 0…255 (float): clamp, ×255, round half to even."""
    return torch.round(torch.clamp(image, 0.0, 1.0) * 255.0)


class FaceToUint8(nn.Module):
    """(B, 3, H, W) float in [0, 1] → (B, H, W, 3) uint8 (what the gateway pastes and encodes)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _to_uint8_levels(image).to(torch.uint8).permute(0, 2, 3, 1)


def opencv_linear_taps(size: int, *, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights (in quarters) of OpenCV's INTER_LINEAR enlargement ``size`` → ``2·size``.

    Output pixel ``o`` samples at ``(o + 0.5)/2 − 0.5`` (half-pixel centres, like align_corners=False). At the
    borders OpenCV treats the two axes differently: along x it moves the sample inside (weights 1, 0); along y it
    keeps the weights (¼, ¾) and repeats the edge row, which matters because of its rounding (see EnhancerInput).
    """
    out = np.arange(2 * size)
    position = (out + 0.5) / 2 - 0.5
    first = np.floor(position).astype(np.int64)
    fraction = position - first
    w0, w1 = 1.0 - fraction, fraction
    if clamp_weights:
        outside = (first < 0) | (first >= size - 1)
        w0 = np.where(outside, 1.0, w0)
        w1 = np.where(outside, 0.0, w1)
    second = np.clip(first + 1, 0, size - 1)
    first = np.clip(first, 0, size - 1)
    return first, second, np.rint(w0 * 4).astype(np.float32), np.rint(w1 * 4).astype(np.float32)


class EnhancerInput(nn.Module):
    """(B, 3, S, S) float in [0, 1] → (B, 3, 2S, 2S) in [-1, 1]: ``to_enhancer(FaceToUint8(x))`` exactly.

    The gateway's path quantises the face to uint8, enlarges it with ``cv2.resize`` (INTER_LINEAR), then maps
    ``u/255`` to [-1, 1]. OpenCV enlarges uint8 images in fixed point: the horizontal pass is exact (weights
    ¼/¾ of 2048), the vertical pass truncates each of its two products before adding 2 and dividing by 4. In
    quarter units, with ``h`` the horizontal result (an integer): ``out = ⌊(⌊h₀·w₀/4⌋ + ⌊h₁·w₁/4⌋ + 2)/4⌋``.
    Every intermediate is an integer below 2¹², so float32 computes it exactly.
    """

    col0: torch.Tensor
    col1: torch.Tensor
    col_w0: torch.Tensor
    col_w1: torch.Tensor
    row0: torch.Tensor
    row1: torch.Tensor
    row_w0: torch.Tensor
    row_w1: torch.Tensor

    def __init__(self, size: int = 256) -> None:
        super().__init__()
        for axis, clamp in (("col", True), ("row", False)):
            first, second, w0, w1 = opencv_linear_taps(size, clamp_weights=clamp)
            self.register_buffer(f"{axis}0", torch.from_numpy(first), persistent=False)
            self.register_buffer(f"{axis}1", torch.from_numpy(second), persistent=False)
            self.register_buffer(f"{axis}_w0", torch.from_numpy(w0), persistent=False)
            self.register_buffer(f"{axis}_w1", torch.from_numpy(w1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        levels = _to_uint8_levels(image)
        # Horizontal pass, in quarter levels (exact).
        h = levels.index_select(3, self.col0) * self.col_w0 + levels.index_select(3, self.col1) * self.col_w1
        # Vertical pass with OpenCV's truncations.
        top = torch.floor(h.index_select(2, self.row0) * self.row_w0[:, None] / 4.0)
        bottom = torch.floor(h.index_select(2, self.row1) * self.row_w1[:, None] / 4.0)
        enlarged = torch.floor((top + bottom + 2.0) / 4.0)
        return (enlarged / 255.0 - 0.5) / 0.5
