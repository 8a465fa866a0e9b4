"""SadTalker's PyTorch modules, from the official files (prefixes inside ``SadTalker_V0.0.2_256.safetensors``,
the mapping files) or in the reduced demo architecture."""

from __future__ import annotations

import dataclasses

from torch import nn

from export.building import Builder, Variant, WeightSource, networks
from export.engines.sadtalker import SADTALKER
from export.engines.sadtalker.steps import EnhancerInput, FaceToUint8, MelWindows
from export.models import audio2exp, audio2pose, face_recon, generator, keypoints, mapping


def _mapping(file_name: str) -> Builder:
    config = mapping.CONFIG_FOR_FILE[file_name]

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            reduced = dataclasses.replace(mapping.REDUCED, coeff_nc=config.coeff_nc)
            return mapping.MappingWithTransform(mapping.MappingNet(reduced))
        state, source = weights.get(file_name)
        return mapping.load_mapping_with_transform(state, config, source)

    return build


BUILDERS: dict[str, Builder] = {
    "audio2exp": networks(
        SADTALKER,
        "audio2exp.",
        lambda v: audio2exp.Audio2Exp(audio2exp.REDUCED),
        lambda state, source, v: audio2exp.load_audio2exp(state, audio2exp.FULL_256, source),
    ),
    "audio2pose": networks(
        SADTALKER,
        "audio2pose.",
        lambda v: audio2pose.Audio2Pose(audio2pose.REDUCED),
        lambda state, source, v: audio2pose.load_audio2pose(state, audio2pose.FULL_256, source),
    ),
    "face_recon": networks(
        SADTALKER,
        "face_3drecon.",
        lambda v: face_recon.FaceRecon(face_recon.REDUCED),
        lambda state, source, v: face_recon.load_face_recon(state, face_recon.FULL_256, source),
    ),
    "kp_detector": networks(
        SADTALKER,
        "kp_extractor.",
        lambda v: keypoints.KPDetector(keypoints.REDUCED),
        lambda state, source, v: keypoints.load_kp_detector(state, keypoints.FULL_256, source),
    ),
    "mapping": _mapping("mapping_00229-model.pth.tar"),
    "mapping_full": _mapping("mapping_00109-model.pth.tar"),
    "generator": networks(
        SADTALKER,
        "generator.",
        lambda v: generator.Generator(generator.REDUCED, v.grid_sample),
        lambda state, source, v: generator.load_generator(state, generator.FULL_256, source, v.grid_sample),
    ),
    "mel_windows": lambda variant, weights: MelWindows(),
    "face_to_uint8": lambda variant, weights: FaceToUint8(),
    "enhancer_input": lambda variant, weights: EnhancerInput(),
}
