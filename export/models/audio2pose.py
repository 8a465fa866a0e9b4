"""Audio2Pose (inference path): 32 mel windows + a latent z + a style id + the source pose → 32 frames of pose motion.

SadTalker (Zhang et al., CVPR 2023), upstream ``src/audio2pose_models/{audio2pose,audio_encoder,cvae,res_unet,
networks}.py`` in OpenTalker/SadTalker, Apache-2.0. The ResUnet follows ResUNet (Zhang et al. 2018).

At inference upstream runs only the CVAE *decoder*: ``z + classbias[style]`` (one of 46 pose styles),
``[ref pose | z | linear_audio(audio) for 32 frames]`` → MLP → (32, 6) → ResUnet → ``pose_linear``. The result
is the motion relative to the source pose; upstream then adds the source pose and smooths over time
(``lipsync.timeline.smooth_pose``). z is an input here (upstream draws ``torch.randn`` per 32-frame window).

Deviation: upstream's audio encoder concatenates the frames time-major (``cat([x[:, i] for i in T])``) and
then reshapes batch-major, which mixes the batch elements when batch > 1. Here each batch element gets its
own frames; at batch 1 both are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from export.layers import make_audio_encoder
from export.weights import StateDict, load_strict


class ResidualConv(nn.Module):
    """Pre-activation residual block: BN → ReLU → conv(stride) → BN → ReLU → conv, plus conv(stride) → BN."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, kernel_size=3, padding=1),
        )
        self.conv_skip = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class Upsample(nn.Module):
    """×2 along time (height) by a (2, 1) transposed convolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(cin, cout, kernel_size=(2, 1), stride=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """(B, 1, T, 6) → (B, 1, T, 6) in (0, 1); three ×2 downsamplings along T (T must be divisible by 8)."""

    def __init__(self, filters: tuple[int, int, int, int]) -> None:
        super().__init__()
        f0, f1, f2, f3 = filters
        self.input_layer = nn.Sequential(
            nn.Conv2d(1, f0, kernel_size=3, padding=1),
            nn.BatchNorm2d(f0),
            nn.ReLU(),
            nn.Conv2d(f0, f0, kernel_size=3, padding=1),
        )
        self.input_skip = nn.Sequential(nn.Conv2d(1, f0, kernel_size=3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, stride=(2, 1))
        self.residual_conv_2 = ResidualConv(f1, f2, stride=(2, 1))
        self.bridge = ResidualConv(f2, f3, stride=(2, 1))
        self.upsample_1 = Upsample(f3, f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, stride=1)
        self.upsample_2 = Upsample(f2, f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, stride=1)
        self.upsample_3 = Upsample(f1, f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, stride=1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)
        x2 = self.residual_conv_1(x1)
        x3 = self.residual_conv_2(x2)
        x4 = self.bridge(x3)
        x6 = self.up_residual_conv1(torch.cat([self.upsample_1(x4), x3], dim=1))
        x8 = self.up_residual_conv2(torch.cat([self.upsample_2(x6), x2], dim=1))
        x10 = self.up_residual_conv3(torch.cat([self.upsample_3(x8), x1], dim=1))
        return self.output_layer(x10)


@dataclass(frozen=True)
class Audio2PoseConfig:
    """Sizes of the audio encoder and the CVAE decoder (upstream ``auido2pose.yaml``: MODEL.CVAE)."""

    encoder_channels: tuple[int, int, int, int, int]
    resunet_filters: tuple[int, int, int, int]
    decoder_hidden: int  # DECODER_LAYER_SIZES[0]; the last size is seq_len · pose_dim
    seq_len: int = 32
    latent_size: int = 64
    num_classes: int = 46
    audio_emb_out: int = 6
    pose_dim: int = 6


class AudioEncoder(nn.Module):
    """(B, T, 1, 80, 16) → (B, T, C): Wav2Lip's encoder per frame, each batch element kept apart."""

    def __init__(self, config: Audio2PoseConfig) -> None:
        super().__init__()
        self.seq_len = config.seq_len
        self.audio_encoder = make_audio_encoder(config.encoder_channels)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        frames = mels.reshape(-1, 1, mels.shape[-2], mels.shape[-1])
        embedding = self.audio_encoder(frames)  # (B·T, C, 1, 1), batch-major
        return embedding.reshape(-1, self.seq_len, embedding.shape[1])


class PoseDecoder(nn.Module):
    """CVAE decoder (upstream ``DECODER``): the parameter names follow ``netG.decoder.*``."""

    def __init__(self, config: Audio2PoseConfig) -> None:
        super().__init__()
        self.seq_len = config.seq_len
        self.pose_dim = config.pose_dim
        self.resunet = ResUnet(config.resunet_filters)
        in_size = config.latent_size + config.seq_len * config.audio_emb_out + config.pose_dim
        self.MLP = nn.Sequential()
        self.MLP.add_module("L0", nn.Linear(in_size, config.decoder_hidden))
        self.MLP.add_module("A0", nn.ReLU())
        self.MLP.add_module("L1", nn.Linear(config.decoder_hidden, config.seq_len * config.pose_dim))
        self.MLP.add_module("sigmoid", nn.Sigmoid())
        self.pose_linear = nn.Linear(config.pose_dim, config.pose_dim)
        self.linear_audio = nn.Linear(config.encoder_channels[-1], config.audio_emb_out)
        # Random like upstream, so that the styles differ in the reduced (randomly initialised) model too.
        self.classbias = nn.Parameter(torch.randn(config.num_classes, config.latent_size))

    def forward(
        self, audio_emb: torch.Tensor, z: torch.Tensor, pose_style: torch.Tensor, ref_pose: torch.Tensor
    ) -> torch.Tensor:
        audio = self.linear_audio(audio_emb).flatten(1)  # (B, seq_len · 6)
        z = z + self.classbias[pose_style]
        hidden = self.MLP(torch.cat([ref_pose, z, audio], dim=-1))
        pose_emb = self.resunet(hidden.reshape(-1, 1, self.seq_len, self.pose_dim))
        return self.pose_linear(pose_emb.squeeze(1))


class CVAE(nn.Module):
    """Only the decoder of upstream's CVAE; its encoder is for training (see ``UNUSED_PREFIXES``)."""

    def __init__(self, config: Audio2PoseConfig) -> None:
        super().__init__()
        self.decoder = PoseDecoder(config)


class Audio2Pose(nn.Module):
    """forward(mels (B, 32, 1, 80, 16), z (B, 64), pose_style (B,) int64, ref_pose (B, 6)) → motion (B, 32, 6).

    One batch element is one 32-frame window. ``motion`` is upstream's ``pose_motion_pred``: add ``ref_pose``
    and smooth (``lipsync.timeline.smooth_pose``) to get the head pose.
    """

    def __init__(self, config: Audio2PoseConfig) -> None:
        super().__init__()
        if config.seq_len % 8:
            raise ValueError(f"seq_len must be divisible by 8 for the ResUnet, got {config.seq_len}")
        self.config = config
        self.audio_encoder = AudioEncoder(config)
        self.netG = CVAE(config)

    def forward(
        self, mels: torch.Tensor, z: torch.Tensor, pose_style: torch.Tensor, ref_pose: torch.Tensor
    ) -> torch.Tensor:
        return self.netG.decoder(self.audio_encoder(mels), z, pose_style, ref_pose)


# --------------------------------------------------------------------------- checkpoint filter

# Training-only parts of the ``audio2pose.`` checkpoint: the CVAE encoder (posterior q(z | pose, audio), unused
# because z is sampled from the prior at inference) and the pose-sequence discriminator.
UNUSED_PREFIXES: tuple[str, ...] = ("netG.encoder.", "netD_motion.")


def convert_state_dict(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Prefix-stripped official ``audio2pose.*`` tensors → this module's state dict (same names, minus unused)."""
    return {k: v for k, v in official.items() if not k.startswith(UNUSED_PREFIXES)}


# --------------------------------------------------------------------------- configurations

FULL_256 = Audio2PoseConfig(
    encoder_channels=(32, 64, 128, 256, 512), resunet_filters=(32, 64, 128, 256), decoder_hidden=128
)
FULL_512 = FULL_256  # the 512 checkpoint carries the same audio2pose tensors
REDUCED = Audio2PoseConfig(encoder_channels=(4, 8, 8, 16, 16), resunet_filters=(4, 4, 8, 8), decoder_hidden=16)


def load_audio2pose(
    official_stripped: Mapping[str, torch.Tensor],
    config: Audio2PoseConfig = FULL_256,
    source: str = "SadTalker_V0.0.2_256.safetensors [audio2pose.]",
) -> Audio2Pose:
    """Build Audio2Pose, convert the official tensors, load them strictly, switch to eval mode."""
    module = Audio2Pose(config)
    load_strict(module, convert_state_dict(official_stripped), source=source)
    return module.eval()
