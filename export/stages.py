"""Build the PyTorch module behind each served stage, from official weights or for the demo.

A ``Variant`` says which weights and which forms: official checkpoints from a directory (the full
architecture), or none — the reduced-width architecture with seeded random weights, for tests and the
demo. Every module returned takes exactly its stage's inputs (``export.specs.STAGES``) in order.

The Wav2Lip engine's weights are optional (non-commercial licence): its stage is built from ``wav2lip_gan.pth``
in the checkpoint directory, or from the file ``Variant.wav2lip`` names.

A builder takes its tensors from a ``WeightSource``: the files (what ``StageFactory`` uses), or
``export.synthetic.SyntheticWeights`` — official layouts made in memory (``bench/gpu.py``, no files).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from export import ensemble_steps
from export.layers import fold_batch_norms
from export.mel import MelSpectrogram
from export.models import audio2exp, audio2pose, face_recon, generator, gfpgan, keypoints, mapping, wav2lip
from export.official import WAV2LIP
from export.weights import MANIFESTED_FILES, StateDict, is_synthetic, read_checkpoint, strip_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """Which weights and forms to build. ``checkpoints=None`` is the reduced demo architecture.

    ``wav2lip``: the Wav2Lip checkpoint file (default: ``wav2lip_gan.pth`` in ``checkpoints``).
    """

    checkpoints: Path | None
    size: Literal[256, 512] = 256
    grid_sample: Literal["4d", "5d"] = "5d"
    seed: int = 0
    wav2lip: Path | None = None

    def __post_init__(self) -> None:
        if self.checkpoints is None and self.wav2lip is not None:
            raise ValueError("a Wav2Lip checkpoint file needs official weights (checkpoints), not the reduced variant")

    @property
    def wav2lip_checkpoint(self) -> Path | None:
        """The Wav2Lip file this variant reads (``None`` for the reduced variant); it may not exist."""
        if self.checkpoints is None:
            return None
        return self.wav2lip if self.wav2lip is not None else self.checkpoints / WAV2LIP

    @property
    def reduced(self) -> bool:
        return self.checkpoints is None

    def describe(self) -> dict[str, object]:
        """Provenance for sidecars and logs: never lets random weights pass for official ones."""
        if self.checkpoints is None:
            weights = f"RANDOM (reduced architecture, seed {self.seed}) - not a result of the models"
        elif any(is_synthetic(p) for p in self._files(self.checkpoints)):
            weights = f"SYNTHETIC official-layout checkpoints in {self.checkpoints} - not the official weights"
        else:
            weights = f"official checkpoints in {self.checkpoints}"
        described: dict[str, object] = {
            "weights": weights,
            "reduced": self.reduced,
            "size": self.size,
            "grid_sample": self.grid_sample,
        }
        if self.wav2lip is not None:
            described["wav2lip_checkpoint"] = str(self.wav2lip)
        return described

    def _files(self, directory: Path) -> list[Path]:
        """The official-layout files this variant may read."""
        files = [p for p in sorted(directory.glob("*")) if p.name in MANIFESTED_FILES]
        if self.wav2lip is not None and self.wav2lip.is_file():
            files.append(self.wav2lip)
        return files


@dataclass
class _Weights:
    """Reads each official file once per build session."""

    directory: Path
    size: int
    _files: dict[str, StateDict] = field(default_factory=dict)

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]:
        file_name = file_name.replace("_256.", f"_{self.size}.")
        if file_name not in self._files:
            self._files[file_name] = read_checkpoint(self.directory / file_name)
        state = self._files[file_name]
        return (strip_prefix(state, prefix) if prefix else state), f"{file_name} [{prefix or 'all'}]"


class WeightSource(Protocol):
    """Gives the tensors of an official file under ``prefix`` (prefix removed), and a name for messages."""

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]: ...


_SADTALKER = "SadTalker_V0.0.2_256.safetensors"
Builder = Callable[[Variant, WeightSource | None], nn.Module]


def _mel(variant: Variant, weights: WeightSource | None) -> nn.Module:
    return MelSpectrogram()


def _networks(
    file_name: str,
    prefix: str,
    reduced: Callable[[Variant], nn.Module],
    load: Callable[[StateDict, str, Variant], nn.Module],
) -> Builder:
    """A network built from ``prefix`` in an official file, or its reduced form with random weights."""

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            return reduced(variant)
        state, source = weights.get(file_name, prefix)
        return load(state, source, variant)

    return build


def _mapping(file_name: str) -> Builder:
    config = mapping.CONFIG_FOR_FILE[file_name]

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            reduced = dataclasses.replace(mapping.REDUCED, coeff_nc=config.coeff_nc)
            return mapping.MappingWithTransform(mapping.MappingNet(reduced))
        state, source = weights.get(file_name)
        return mapping.load_mapping_with_transform(state, config, source)

    return build


def _wav2lip(variant: Variant, weights: WeightSource | None) -> nn.Module:
    """Wav2Lip with its batch norms folded into the convolutions (the exporter folds only those after a plain
    convolution; this also removes the six after the transposed ones)."""
    if weights is None:
        module: nn.Module = wav2lip.Wav2Lip(wav2lip.REDUCED)
    else:
        if variant.wav2lip is not None:  # a file named explicitly, wherever it is
            state, source = read_checkpoint(variant.wav2lip), variant.wav2lip.name
        else:
            state, source = weights.get(WAV2LIP)
        module = wav2lip.load_wav2lip(state, wav2lip.FULL, source=source)
    return fold_batch_norms(module.eval())


BUILDERS: dict[str, Builder] = {
    "mel": _mel,
    "audio2exp": _networks(
        _SADTALKER,
        "audio2exp.",
        lambda v: audio2exp.Audio2Exp(audio2exp.REDUCED),
        lambda state, source, v: audio2exp.load_audio2exp(state, audio2exp.FULL_256, source),
    ),
    "audio2pose": _networks(
        _SADTALKER,
        "audio2pose.",
        lambda v: audio2pose.Audio2Pose(audio2pose.REDUCED),
        lambda state, source, v: audio2pose.load_audio2pose(state, audio2pose.FULL_256, source),
    ),
    "face_recon": _networks(
        _SADTALKER,
        "face_3drecon.",
        lambda v: face_recon.FaceRecon(face_recon.REDUCED),
        lambda state, source, v: face_recon.load_face_recon(state, face_recon.FULL_256, source),
    ),
    "kp_detector": _networks(
        _SADTALKER,
        "kp_extractor.",
        lambda v: keypoints.KPDetector(keypoints.REDUCED),
        lambda state, source, v: keypoints.load_kp_detector(state, keypoints.FULL_256, source),
    ),
    "mapping": _mapping("mapping_00229-model.pth.tar"),
    "mapping_full": _mapping("mapping_00109-model.pth.tar"),
    "generator": _networks(
        _SADTALKER,
        "generator.",
        lambda v: generator.Generator(generator.REDUCED, v.grid_sample),
        lambda state, source, v: generator.load_generator(state, generator.FULL_256, source, v.grid_sample),
    ),
    "gfpgan": _networks(
        "GFPGANv1.4.pth",
        "",
        lambda v: gfpgan.GFPGAN(gfpgan.REDUCED),
        lambda state, source, v: gfpgan.load_gfpgan(state, gfpgan.FULL_512, source),
    ),
    # Ensemble glue (no weights); appended last so the stages above keep their seeds.
    "mel_windows": lambda variant, weights: ensemble_steps.MelWindows(),
    "face_to_uint8": lambda variant, weights: ensemble_steps.FaceToUint8(),
    "enhancer_input": lambda variant, weights: ensemble_steps.EnhancerInput(),
    "enhancer_output": lambda variant, weights: ensemble_steps.EnhancerOutput(),
    # The second engine and its glue; last, so that every stage above keeps its seed.
    "wav2lip": _wav2lip,
    "wav2lip_to_uint8": lambda variant, weights: ensemble_steps.Wav2LipToUint8(),
    "wav2lip_enhancer_input": lambda variant, weights: ensemble_steps.Wav2LipEnhancerInput(),
}


class StageFactory:
    """Builds stage modules for one variant, reading each official file at most once."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self._weights = None if variant.checkpoints is None else _Weights(variant.checkpoints, variant.size)

    @functools.cache  # noqa: B019 - one factory per export run; the cache dies with it
    def build(self, stage: str) -> nn.Module:
        if stage not in BUILDERS:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(BUILDERS)}")
        if self.variant.reduced:
            # Seed per stage so each module's random weights do not depend on which others were built.
            torch.manual_seed(self.variant.seed * 1000 + list(BUILDERS).index(stage))
        return BUILDERS[stage](self.variant, self._weights).eval()
