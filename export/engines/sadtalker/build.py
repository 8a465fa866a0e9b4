"""SadTalker's PyTorch modules, from the official files its stages name (file and prefix: ``checkpoint``) or in
the reduced demo architecture."""

from __future__ import annotations

import dataclasses

from torch import nn

from export.building import Builder, Variant, WeightSource, networks
from export.engines.sadtalker import AUDIO2EXP, AUDIO2POSE, FACE_RECON, GENERATOR, KP_DETECTOR, MAPPING, MAPPING_FULL
from export.engines.sadtalker.steps import EnhancerInput, FaceToUint8, MelWindows
from export.models import audio2exp, audio2pose, face_recon, generator, keypoints, mapping
from export.specs import StageSpec


def _mapping(spec: StageSpec) -> Builder:
    config = mapping.CONFIG_FOR_FILE[spec.weights_file]

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            reduced = dataclasses.replace(mapping.REDUCED, coeff_nc=config.coeff_nc)
            return mapping.MappingWithTransform(mapping.MappingNet(reduced))
        state, source = weights.get(spec.weights_file)
        return mapping.load_mapping_with_transform(state, config, source)

    return build


BUILDERS: dict[str, Builder] = {
    "audio2exp": networks(
        AUDIO2EXP,
        lambda v: audio2exp.Audio2Exp(audio2exp.REDUCED),
        lambda state, source, v: audio2exp.load_audio2exp(state, audio2exp.FULL_256, source),
    ),
    "audio2pose": networks(
        AUDIO2POSE,
        lambda v: audio2pose.Audio2Pose(audio2pose.REDUCED),
        lambda state, source, v: audio2pose.load_audio2pose(state, audio2pose.FULL_256, source),
    ),
    "face_recon": networks(
        FACE_RECON,
        lambda v: face_recon.FaceRecon(face_recon.REDUCED),
        lambda state, source, v: face_recon.load_face_recon(state, face_recon.FULL_256, source),
    ),
    "kp_detector": networks(
        KP_DETECTOR,
        lambda v: keypoints.KPDetector(keypoints.REDUCED),
        lambda state, source, v: keypoints.load_kp_detector(state, keypoints.FULL_256, source),
    ),
    "mapping": _mapping(MAPPING),
    "mapping_full": _mapping(MAPPING_FULL),
    "generator": networks(
        GENERATOR,
        lambda v: generator.Generator(generator.REDUCED, v.grid_sample),
        lambda state, source, v: generator.load_generator(state, generator.FULL_256, source, v.grid_sample),
    ),
    "mel_windows": lambda variant, weights: MelWindows(),
    "face_to_uint8": lambda variant, weights: FaceToUint8(),
    "enhancer_input": lambda variant, weights: EnhancerInput(),
}
