"""SadTalker's export: audio → 3DMM expression (`motion`), the portrait's coefficients and keypoints (`avatar`),
and the face renderer (`render`, `render_enhanced` with GFPGAN). Torch-free: the modules are built by
:mod:`export.engines.sadtalker.build`."""

from __future__ import annotations

from export.engines.shared import ENHANCER_OUTPUT, GFPGAN, MEL
from export.specs import BATCH, EngineExport, EnsembleSpec, OfficialFile, StageSpec, TensorIO, f32, like, step

SADTALKER = "SadTalker_V0.0.2_256.safetensors"  # the 512 file stands in for it at render size 512
_RELEASE = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"

FILES = (
    OfficialFile(
        "SadTalker_V0.0.2_256.safetensors",
        f"{_RELEASE}/SadTalker_V0.0.2_256.safetensors",
        None,
        "audio2exp, audio2pose, face_recon, keypoint detector and generator (256² renderer)",
        # LFS pointer in the SadTalker authors' Hugging Face copy of this release:
        # https://huggingface.co/vinthony/SadTalker-V002rc/commit/a4827306558d062e5884afff655fdfeb75d9c8ab
        "c211f5d6de003516bf1bbda9f47049a4c9c99133b1ab565c6961e5af16477bff",
        725_066_984,
        render_sizes=(256,),
    ),
    OfficialFile(
        "SadTalker_V0.0.2_512.safetensors",
        f"{_RELEASE}/SadTalker_V0.0.2_512.safetensors",
        None,
        "the same networks for the 512² renderer",
        # same source as the 256 file
        "0e063f7ff5258240bdb0f7690783a7b1374e6a4a81ce8fa33456f4cd49694340",
        725_066_984,
        render_sizes=(512,),
        replaces=SADTALKER,
    ),
    OfficialFile(
        "mapping_00229-model.pth.tar",
        f"{_RELEASE}/mapping_00229-model.pth.tar",
        "mapping",
        "mapping net, 70 coefficients (crop and resize modes)",
        # same source as the 256 file
        "62a1e06006cc963220f6477438518ed86e9788226c62ae382ddc42fbcefb83f1",
        155_521_183,
    ),
    OfficialFile(
        "mapping_00109-model.pth.tar",
        f"{_RELEASE}/mapping_00109-model.pth.tar",
        "mapping",
        "mapping net, 73 coefficients (full paste-back mode)",
        # same source as the 256 file
        "84a8642468a3fcfdd9ab6be955267043116c2bec2284686a5262f1eaf017f64c",
        155_779_231,
    ),
)

AUDIO2EXP = StageSpec(
    "audio2exp",
    inputs=(
        f32("mel", 1, 80, 16, doc="the 16 mel frames around a video frame"),
        f32("ref_exp", 64, doc="the portrait's expression coefficients"),
        f32("ratio", 1, doc="eye blink ratio", sample="unit"),
    ),
    outputs=(f32("exp", 64, doc="expression coefficients"),),
    per_frame=True,
    checkpoint=f"{SADTALKER}:audio2exp.",
    doc="audio → 3DMM expression, one video frame per batch row",
)

AUDIO2POSE = StageSpec(
    "audio2pose",
    inputs=(
        f32("mels", 32, 1, 80, 16, doc="one 32-frame window of mel windows"),
        f32("z", 64, doc="the window's latent (seeded per session)"),
        TensorIO("pose_style", "int64", (BATCH,), "pose style id, 0..45", "int:46"),
        f32("ref_pose", 6, doc="the portrait's angles (3) and translation (3)"),
    ),
    outputs=(f32("motion", 32, 6, doc="pose motion to add to ref_pose, before smoothing"),),
    per_frame=False,
    checkpoint=f"{SADTALKER}:audio2pose.",
    doc="CVAE decoder over 32-frame windows (pose mode `audio` only)",
)

FACE_RECON = StageSpec(
    "face_recon",
    inputs=(f32("image", 3, 224, 224, doc="aligned face, RGB in [0, 1]", sample="unit"),),
    outputs=(f32("coeffs", 257, doc="id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3"),),
    per_frame=False,
    checkpoint=f"{SADTALKER}:face_3drecon.",
    doc="ResNet-50 3DMM regressor, once per avatar",
)

KP_DETECTOR = StageSpec(
    "kp_detector",
    inputs=(f32("image", 3, 256, 256, doc="face crop, RGB in [0, 1]", sample="unit"),),
    outputs=(f32("kp", 15, 3, doc="canonical keypoints"),),
    per_frame=False,
    checkpoint=f"{SADTALKER}:kp_extractor.",
    doc="canonical keypoints, once per avatar",
)

MAPPING = StageSpec(
    "mapping",
    inputs=(
        f32("window", 70, 27, doc="27 frames of [exp 64 | angles 3 | trans 3], clamped at the ends"),
        f32("kp_canonical", 15, 3, sample="keypoints"),
    ),
    outputs=(f32("kp_driving", 15, 3, doc="keypoints of the frame at the window's centre"),),
    per_frame=True,
    checkpoint="mapping_00229-model.pth.tar",
    doc="mapping net + keypoint transformation (crop and resize modes)",
    avatar_calls=True,
)

MAPPING_FULL = StageSpec(
    "mapping_full",
    inputs=(
        f32("window", 73, 27, doc="as `mapping`, plus crop scale and offset (3)"),
        f32("kp_canonical", 15, 3, sample="keypoints"),
    ),
    outputs=(f32("kp_driving", 15, 3),),
    per_frame=True,
    checkpoint="mapping_00109-model.pth.tar",
    doc="mapping net + keypoint transformation (full paste-back mode)",
)

GENERATOR = StageSpec(
    "generator",
    inputs=(
        f32("source_image", 3, 256, 256, doc="the avatar's face crop, RGB in [0, 1]", sample="unit"),
        f32("kp_source", 15, 3, sample="keypoints"),
        f32("kp_driving", 15, 3, sample="keypoints"),
    ),
    outputs=(f32("prediction", 3, 256, 256, doc="rendered face, RGB in [0, 1]"),),
    per_frame=True,
    checkpoint=f"{SADTALKER}:generator.",
    doc="dense motion + occlusion-aware SPADE generator (≈1.2 TFLOP/frame at full size)",
)

# Small steps that glue the networks into Triton ensembles (export/engines/sadtalker/steps.py).
MEL_WINDOWS = StageSpec(
    "mel_windows",
    inputs=(
        TensorIO("mel", "float32", (1, "mel_frames", 80), "log-mel of one signal span (`mel`'s output)"),
        TensorIO(
            "index",
            "int64",
            (BATCH, 16),
            "each video frame's 16 mel-frame indices into the span, clamped to 0..mel_frames−1",
            "int:20",  # below TRACE_SIZES["mel_frames"]
        ),
    ),
    outputs=(TensorIO("windows", "float32", (BATCH, 1, 80, 16), "audio2exp's `mel` input"),),
    # Not batched by Triton: one signal span (batch 1) in, K frames out.
    per_frame=False,
    checkpoint="",
    doc="ensemble step of `motion`: gathers each video frame's 16 mel frames from one span",
)

FACE_TO_UINT8 = StageSpec(
    "face_to_uint8",
    inputs=(f32("image", 3, 256, 256, doc="rendered face, RGB in about [0, 1]"),),
    outputs=(TensorIO("face", "uint8", (BATCH, 256, 256, 3), "face crop, RGB, height × width × channel"),),
    per_frame=True,
    checkpoint="",
    doc="ensemble step of `render`: clamp to [0, 1], ×255, round half to even (upstream's img_as_ubyte)",
)

ENHANCER_INPUT = StageSpec(
    "enhancer_input",
    inputs=(f32("image", 3, 256, 256, doc="rendered face, RGB in about [0, 1]"),),
    outputs=(f32("image512", 3, 512, 512, doc="GFPGAN's input, RGB in [-1, 1]"),),
    per_frame=True,
    checkpoint="",
    doc="ensemble step of `render_enhanced`: the uint8 face, OpenCV's bilinear 2× enlargement, → [-1, 1]",
)

# The frames axis of `motion`, which has no Triton batch axis (its signal is one span, batch 1).
FRAMES = "frames"

_RENDER_INPUTS = (
    like(MAPPING, "window"),
    like(MAPPING, "kp_canonical", doc="the avatar's canonical keypoints (avatar's kp_canonical), per frame"),
    like(GENERATOR, "source_image"),
    like(GENERATOR, "kp_source", doc="keypoints of the avatar's own window (mapping of its source frame)"),
)
_RENDER_NETWORKS = (
    step("mapping", {"window": "window", "kp_canonical": "kp_canonical"}, {"kp_driving": "kp_driving"}),
    step(
        "generator",
        {"source_image": "source_image", "kp_source": "kp_source", "kp_driving": "kp_driving"},
        {"prediction": "prediction"},
    ),
)
# A signal span → each frame's (1, 80, 16) mel window, as `windows`.
_MEL_WINDOWS = (
    step(MEL.name, {"signal": "signal"}, {"mel": "mel"}),
    step("mel_windows", {"mel": "mel", "index": "mel_index"}, {"windows": "windows"}),
)
ENSEMBLES = (
    EnsembleSpec(
        "avatar",
        inputs=(
            like(KP_DETECTOR, "image", "crop", "the portrait's 256² face crop, RGB in [0, 1]"),
            like(FACE_RECON, "image", "aligned", "the 224² face aligned to the standard landmarks, RGB [0, 1]"),
        ),
        outputs=(like(FACE_RECON, "coeffs"), like(KP_DETECTOR, "kp", "kp_canonical")),
        steps=(
            step("face_recon", {"image": "aligned"}, {"coeffs": "coeffs"}),
            step("kp_detector", {"image": "crop"}, {"kp": "kp_canonical"}),
        ),
        doc="once per portrait: 3DMM coefficients and canonical keypoints",
    ),
    EnsembleSpec(
        "motion",
        inputs=(
            TensorIO("signal", "float32", (1, "samples"), "a span of the pre-emphasised, centre-padded signal"),
            TensorIO(
                "mel_index",
                "int64",
                (FRAMES, 16),
                "per frame, its 16 mel frames' indices into the span's mel (clamped window indices)",
            ),
            TensorIO("ref_exp", "float32", (FRAMES, 64), "the portrait's expression coefficients, per frame"),
            TensorIO("ratio", "float32", (FRAMES, 1), "eye blink ratio per frame"),
        ),
        outputs=(TensorIO("exp", "float32", (FRAMES, 64), "expression coefficients per frame"),),
        steps=(
            *_MEL_WINDOWS,
            step("audio2exp", {"mel": "windows", "ref_exp": "ref_exp", "ratio": "ratio"}, {"exp": "exp"}),
        ),
        doc="audio → expression coefficients for K frames; no Triton batch axis (K ≤ audio2exp's max batch)",
        calls="audio",
    ),
    EnsembleSpec(
        "render",
        inputs=_RENDER_INPUTS,
        outputs=(like(FACE_TO_UINT8, "face"),),
        steps=(*_RENDER_NETWORKS, step("face_to_uint8", {"image": "prediction"}, {"face": "face"})),
        doc="coefficient windows → rendered 256² face crops (uint8), one per frame",
    ),
    EnsembleSpec(
        "render_enhanced",
        inputs=_RENDER_INPUTS,
        outputs=(like(ENHANCER_OUTPUT, "face"),),
        steps=(
            *_RENDER_NETWORKS,
            step("enhancer_input", {"image": "prediction"}, {"image512": "image512"}),
            step(GFPGAN.name, {"image": "image512"}, {"restored": "restored"}),
            step(ENHANCER_OUTPUT.name, {"restored": "restored"}, {"face": "face"}),
        ),
        doc="as `render`, then GFPGAN v1.4: enhanced 512² face crops (uint8)",
    ),
)

EXPORT = EngineExport(
    "sadtalker",
    stages=(
        AUDIO2EXP,
        AUDIO2POSE,
        FACE_RECON,
        KP_DETECTOR,
        MAPPING,
        MAPPING_FULL,
        GENERATOR,
        MEL_WINDOWS,
        FACE_TO_UINT8,
        ENHANCER_INPUT,
    ),
    builders="export.engines.sadtalker.build",
    files=FILES,
    ensembles=ENSEMBLES,
    # The precision study (docs/gpu.md, bench/gpu.py): in fp16 the 4-D sampler's mosaic coordinates round to a
    # quarter of a pixel, and the face's error grows ≈ 5× (uint8 values off by up to 150 levels instead of 21).
    # Triton cannot keep a single layer in fp32 (export/repository.py), so the whole model stays FP32 (its
    # convolutions TF32 on Ampere and later); `RepositorySettings.fp16_generator` trades the rule for speed.
    tensorrt_fp32={"generator": "its sampling coordinates must stay fp32 (docs/gpu.md)"},
)
