"""Wav2Lip's export: the network (mel windows + the masked face → the face with lips for the audio) and its
ensembles (`wav2lip_render`, `wav2lip_render_enhanced` with GFPGAN), and its int8 form for live CPU serving.
Torch-free: the modules are built by :mod:`export.engines.wav2lip.build`. The weights are non-commercial
(export/official.py)."""

from __future__ import annotations

from export.engines.shared import ENHANCER_OUTPUT, GFPGAN
from export.engines.wav2lip.calibration import media_inputs, synthetic_inputs
from export.specs import BATCH, EngineExport, EnsembleSpec, Int8Form, OfficialFile, StageSpec, TensorIO, f32, like, step

WAV2LIP = StageSpec(
    "wav2lip",
    inputs=(
        f32("mel_window", 1, 80, 16, doc="the 16 mel frames from int(80·i/25), clamped to end at the last"),
        f32(
            "face",
            6,
            96,
            96,
            doc="96² face crop, BGR /255: [rows ≥ 48 zeroed ‖ the crop] (lipsync.wav2lip.face_input)",
            sample="unit",
        ),
    ),
    outputs=(f32("prediction", 3, 96, 96, doc="the face with lips for the audio, BGR in [0, 1]"),),
    per_frame=True,
    checkpoint="wav2lip_gan.pth",
    doc="Wav2Lip lip-sync engine, one video frame per batch row (≈7.9 GFLOP/frame; weights non-commercial)",
    max_frames=128,
)

# Small steps that glue the network into Triton ensembles (export/engines/wav2lip/steps.py).
WAV2LIP_TO_UINT8 = StageSpec(
    "wav2lip_to_uint8",
    inputs=(f32("prediction", 3, 96, 96, doc="Wav2Lip's output, BGR in [0, 1]"),),
    outputs=(TensorIO("face", "uint8", (BATCH, 96, 96, 3), "face crop, RGB, height × width × channel"),),
    per_frame=True,
    checkpoint="",
    doc="ensemble step of `wav2lip_render`: ×255 truncated (upstream's astype(uint8)), BGR → RGB",
    max_frames=128,
)

WAV2LIP_ENHANCER_INPUT = StageSpec(
    "wav2lip_enhancer_input",
    inputs=(f32("prediction", 3, 96, 96, doc="Wav2Lip's output, BGR in [0, 1]"),),
    outputs=(f32("image512", 3, 512, 512, doc="GFPGAN's input, RGB in [-1, 1]"),),
    per_frame=True,
    checkpoint="",
    doc="ensemble step of `wav2lip_render_enhanced`: the uint8 face, bilinear to 512², → [-1, 1]",
)

_WAV2LIP_INPUTS = (
    like(WAV2LIP, "mel_window"),
    like(WAV2LIP, "face", "face_input", "the avatar's Wav2Lip face input (masked ‖ crop), per frame"),
)
_WAV2LIP_NETWORK = (step("wav2lip", {"mel_window": "mel_window", "face": "face_input"}, {"prediction": "prediction"}),)


ENSEMBLES = (
    EnsembleSpec(
        "wav2lip_render",
        inputs=_WAV2LIP_INPUTS,
        outputs=(like(WAV2LIP_TO_UINT8, "face"),),
        steps=(*_WAV2LIP_NETWORK, step("wav2lip_to_uint8", {"prediction": "prediction"}, {"face": "face"})),
        doc="Wav2Lip: mel windows + the avatar's face input → 96² faces (uint8), one per frame",
    ),
    EnsembleSpec(
        "wav2lip_render_enhanced",
        inputs=_WAV2LIP_INPUTS,
        outputs=(like(ENHANCER_OUTPUT, "face"),),
        steps=(
            *_WAV2LIP_NETWORK,
            step("wav2lip_enhancer_input", {"prediction": "prediction"}, {"image512": "image512"}),
            step(GFPGAN.name, {"image": "image512"}, {"restored": "restored"}),
            step(ENHANCER_OUTPUT.name, {"restored": "restored"}, {"face": "face"}),
        ),
        doc="as `wav2lip_render`, then GFPGAN v1.4 on the face: 512² faces (uint8)",
    ),
)

# Wav2Lip's authors publish wav2lip.pth and wav2lip_gan.pth only as Google Drive links in the Rudrabha/Wav2Lip
# README (the earlier SharePoint links are dead); a Drive download needs a browser confirmation, so no script can
# fetch it. Nekochu/Wav2Lip on Hugging Face holds both files as published (the torch pickles with optimizer,
# ~416 MiB each; commit fb925b05 added them, the README names Rudrabha/Wav2Lip as the origin); numz/wav2lip_studio
# and steinhaug/cache-repository hold the same bytes (same LFS digests). The address is pinned to a commit, so a
# later push to that repository cannot change what is fetched. camenduru/Wav2Lip, the copy many notebooks use,
# is not usable: its checkpoints/wav2lip.pth is a 167 kB file (LFS sha256 b6c6630c…), not the weights.
_MIRROR = "https://huggingface.co/Nekochu/Wav2Lip/resolve/3b29710a61ce62afe87ba6fc3f37bd85728f9af4"
_TERMS = (
    "NON-COMMERCIAL use only: trained on LRS2 (BBC), research/academic/personal use; "
    "see https://github.com/Rudrabha/Wav2Lip#license-and-citation"
)
# Never part of a default download (the licence forbids commercial use): fetched only with
# `python -m export download --wav2lip --accept-wav2lip-licence`. The first file is the default one.
FILES = (
    OfficialFile(
        "wav2lip_gan.pth",
        f"{_MIRROR}/wav2lip_gan.pth",
        "state_dict",
        f"Wav2Lip + GAN lip-sync engine (optional; the default Wav2Lip file). {_TERMS}",
        # LFS pointer in the commit that added both files to the mirror:
        # https://huggingface.co/Nekochu/Wav2Lip/commit/fb925b05f0d353850ee0c56810e4545e274e2b5a
        "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
        435_801_865,
        need="licensed",
    ),
    OfficialFile(
        "wav2lip.pth",
        f"{_MIRROR}/wav2lip.pth",
        "state_dict",
        f"Wav2Lip without the GAN loss: more accurate lip sync, blurrier (optional). {_TERMS}",
        # same source as wav2lip_gan.pth
        "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37",
        435_807_851,
        need="licensed",
    ),
)
LICENCE = (
    "Wav2Lip's weights (wav2lip_gan.pth, wav2lip.pth) are licensed for NON-COMMERCIAL use only: the models were "
    "trained on the LRS2 dataset, and their authors allow research, academic and personal use; any commercial use "
    "is prohibited (https://github.com/Rudrabha/Wav2Lip#license-and-citation; commercial requests go to the authors)."
)

EXPORT = EngineExport(
    "wav2lip",
    stages=(WAV2LIP, WAV2LIP_TO_UINT8, WAV2LIP_ENHANCER_INPUT),
    builders="export.engines.wav2lip.build",
    files=FILES,
    licence=LICENCE,
    ensembles=ENSEMBLES,
    int8={
        "wav2lip": Int8Form(
            "the live CPU engine: its convolutions are all its cost, and int8 makes 25 fps reachable on 2 cores",
            synthetic_inputs,
            media_inputs,
        )
    },
)
