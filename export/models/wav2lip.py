"""Wav2Lip: one 80×16 mel window + a 96² face crop (lower half masked ‖ the crop) → the 96² face with new lips.

Prajwal, Mukhopadhyay, Namboodiri, Jawahar, "A Lip Sync Expert Is All You Need for Speech to Lip Generation In
the Wild", ACM Multimedia 2020. Upstream ``models/wav2lip.py`` and ``models/conv.py`` in Rudrabha/Wav2Lip
(read at commit 5c90fa9, April 2025); code and weights for personal, research and non-commercial use only (the
networks were trained on LRS2).

Per video frame: a face encoder (7 blocks, 96² → 1²: 16, 32, 64, 128, 256, 512, 512 channels) keeps every
block's output; the audio encoder (SadTalker's too: ``export.layers.make_audio_encoder``) gives a 512×1×1
embedding; the decoder starts from the embedding and at each level concatenates the face encoder's output of the
same size (U-Net skips), upsampling with transposed convolutions to 96²; the output block is conv → BN → ReLU,
a plain 1×1 convolution to 3 channels, and a sigmoid. Channels are BGR, values in [0, 1] (``x/255``).
``lipsync.wav2lip`` builds the inputs (mel windows, masked face) without torch.

Upstream's forward also accepts (B, T, …) sequences and folds T into the batch; at inference it is called on
(N, 1, 80, 16) and (N, 6, 96, 96), which is the only form here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from export.layers import ConvBlock, ConvTransposeBlock, make_audio_encoder
from export.weights import CheckpointError, StateDict, load_strict

log = logging.getLogger(__name__)

# Residual ConvBlocks after the first (down-sampling) unit of face encoder blocks 1-5.
_ENCODER_RESIDUALS = (2, 3, 2, 2, 1)
# Residual ConvBlocks after the transposed convolution of decoder blocks 1-6.
_DECODER_RESIDUALS = (1, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class Wav2LipConfig:
    """Channel widths; the topology (block and residual counts, kernels, strides) is fixed.

    ``face_channels``: the 7 face encoder blocks (96² → 96, 48, 24, 12, 6, 3, 1).
    ``audio_channels``: the audio encoder's 5 stages (its last width is the embedding's).
    ``decoder_channels``: the 7 decoder blocks (1² → 1, 3, 6, 12, 24, 48, 96); each block's input is the
    previous block's output concatenated with the face encoder's output of that size.
    ``output_channels``: the hidden width of the output block.
    """

    face_channels: tuple[int, int, int, int, int, int, int]
    audio_channels: tuple[int, int, int, int, int]
    decoder_channels: tuple[int, int, int, int, int, int, int]
    output_channels: int


def _face_encoder(widths: tuple[int, ...]) -> nn.ModuleList:
    blocks = [nn.Sequential(ConvBlock(6, widths[0], 7, 1, 3))]
    for level, residuals in enumerate(_ENCODER_RESIDUALS, start=1):
        cin, cout = widths[level - 1], widths[level]
        units = [ConvBlock(cin, cout, 3, 2, 1)]
        units += [ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
        blocks.append(nn.Sequential(*units))
    blocks.append(nn.Sequential(ConvBlock(widths[5], widths[6], 3, 1, 0), ConvBlock(widths[6], widths[6], 1, 1, 0)))
    return nn.ModuleList(blocks)


def _face_decoder(widths: tuple[int, ...], skips: tuple[int, ...], audio: int) -> nn.ModuleList:
    """``skips``: the face encoder's widths, deepest first (the tensor concatenated after each block)."""
    blocks = [nn.Sequential(ConvBlock(audio, widths[0], 1, 1, 0))]
    for level, residuals in enumerate(_DECODER_RESIDUALS, start=1):
        cin, cout = widths[level - 1] + skips[level - 1], widths[level]
        # 1² → 3² by a 3×3 kernel without padding, then ×2 per block (stride 2, padding 1, output padding 1).
        up = ConvTransposeBlock(cin, cout, 3, 1, 0) if level == 1 else ConvTransposeBlock(cin, cout, 3, 2, 1, 1)
        units: list[nn.Module] = [up]
        units += [ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
        blocks.append(nn.Sequential(*units))
    return nn.ModuleList(blocks)


class Wav2Lip(nn.Module):
    """forward(mel_window (N, 1, 80, 16), face (N, 6, 96, 96)) → prediction (N, 3, 96, 96) in [0, 1]; N = frames.

    ``face`` is [the crop with rows ≥ 48 zeroed ‖ the crop], BGR, /255 (``lipsync.wav2lip.face_input``).
    """

    def __init__(self, config: Wav2LipConfig) -> None:
        super().__init__()
        self.config = config
        face, decoder = config.face_channels, config.decoder_channels
        self.face_encoder_blocks = _face_encoder(face)
        self.audio_encoder = make_audio_encoder(config.audio_channels)
        self.face_decoder_blocks = _face_decoder(decoder, tuple(reversed(face)), config.audio_channels[-1])
        self.output_block = nn.Sequential(
            ConvBlock(decoder[-1] + face[0], config.output_channels, 3, 1, 1),
            nn.Conv2d(config.output_channels, 3, 1),
            nn.Sigmoid(),
        )

    def forward(self, mel_window: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel_window)
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), skips.pop()], dim=1)
        out: torch.Tensor = self.output_block(x)
        return out


# --------------------------------------------------------------------------- checkpoint filter

# Training wrapped the network in nn.DataParallel, so the published state dicts may name every tensor
# ``module.<name>``; upstream's loader removes it. Every tensor is used: nothing is dropped.
PARALLEL_PREFIX = "module."


def convert_state_dict(official: Mapping[str, torch.Tensor]) -> StateDict:
    """The ``state_dict`` of wav2lip.pth / wav2lip_gan.pth → this module's state dict.

    Names are upstream's, with or without the ``module.`` prefix (each name is taken either way); a name that
    appears both ways is an error.
    """
    converted: StateDict = {}
    for name, tensor in official.items():
        key = name.removeprefix(PARALLEL_PREFIX)
        if key in converted:
            raise CheckpointError(f"tensor {key} appears both with and without the {PARALLEL_PREFIX!r} prefix")
        converted[key] = tensor
    return converted


# --------------------------------------------------------------------------- configurations

FULL = Wav2LipConfig(
    face_channels=(16, 32, 64, 128, 256, 512, 512),
    audio_channels=(32, 64, 128, 256, 512),
    decoder_channels=(512, 512, 512, 384, 256, 128, 64),
    output_channels=32,
)
# Same topology, narrow: for fast tests and the demo without official weights.
REDUCED = Wav2LipConfig(
    face_channels=(4, 8, 8, 16, 16, 16, 16),
    audio_channels=(4, 8, 8, 16, 16),
    decoder_channels=(16, 16, 16, 16, 8, 8, 8),
    output_channels=8,
)


def load_wav2lip(
    state: Mapping[str, torch.Tensor], config: Wav2LipConfig = FULL, source: str = "wav2lip_gan.pth"
) -> Wav2Lip:
    """Build Wav2Lip, convert the checkpoint's ``state_dict`` tensors, load them strictly, switch to eval mode."""
    module = Wav2Lip(config)
    converted = convert_state_dict(state)
    if len(converted) and all(name.startswith(PARALLEL_PREFIX) for name in state):
        log.info("%s: removed the %r prefix of every tensor name (a DataParallel checkpoint)", source, PARALLEL_PREFIX)
    load_strict(module, converted, source=source)
    return module.eval()
