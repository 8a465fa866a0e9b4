"""Each served stage's interface: tensor names, dtypes and shapes (with the dynamic axes named).

One description drives the ONNX export (input/output names, dynamic axes), the sidecar JSON, the Triton
``config.pbtxt`` files and the docs, so that they cannot disagree. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dynamic axes are named by strings; fixed axes are ints.
Dim = int | str
BATCH = "batch"


@dataclass(frozen=True)
class TensorIO:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[Dim, ...]  # including the leading batch axis
    doc: str = ""
    # How to draw test inputs: "normal", "unit" (uniform [0, 1]), "signed" (uniform [-1, 1]),
    # "keypoints" (small normal), or "int:N" (integers 0..N-1).
    sample: str = "normal"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class StageSpec:
    """A stage as served: one ONNX graph, one Triton model of the same name."""

    name: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    # Batch axis = video frames: the dynamic batcher may merge requests of different sessions.
    per_frame: bool
    # Where its weights come from (official file, and the prefix inside it).
    checkpoint: str
    doc: str
    opset: int = 17
    # Largest batch of one execution when it differs from the repository's frame_batch: Wav2Lip is cheap, and
    # the compatible protocol lets a client ask for up to 128 frames per request.
    max_frames: int | None = None


def _f32(name: str, *shape: Dim, doc: str = "", sample: str = "normal") -> TensorIO:
    return TensorIO(name, "float32", (BATCH, *shape), doc, sample)


SADTALKER = "SadTalker_V0.0.2_256.safetensors"

STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            "mel",
            inputs=(_f32("signal", "samples", doc="pre-emphasised, centre-padded 16 kHz audio", sample="signed"),),
            outputs=(_f32("mel", "mel_frames", 80, doc="normalised log-mel in [-4, 4], 80 frames/s"),),
            per_frame=False,
            checkpoint="",
            doc="SadTalker's audio front-end (STFT as a convolution, Slaney mel, dB, normalisation)",
        ),
        StageSpec(
            "audio2exp",
            inputs=(
                _f32("mel", 1, 80, 16, doc="the 16 mel frames around a video frame"),
                _f32("ref_exp", 64, doc="the portrait's expression coefficients"),
                _f32("ratio", 1, doc="eye blink ratio", sample="unit"),
            ),
            outputs=(_f32("exp", 64, doc="expression coefficients"),),
            per_frame=True,
            checkpoint=f"{SADTALKER}:audio2exp.",
            doc="audio → 3DMM expression, one video frame per batch row",
        ),
        StageSpec(
            "audio2pose",
            inputs=(
                _f32("mels", 32, 1, 80, 16, doc="one 32-frame window of mel windows"),
                _f32("z", 64, doc="the window's latent (seeded per session)"),
                TensorIO("pose_style", "int64", (BATCH,), "pose style id, 0..45", "int:46"),
                _f32("ref_pose", 6, doc="the portrait's angles (3) and translation (3)"),
            ),
            outputs=(_f32("motion", 32, 6, doc="pose motion to add to ref_pose, before smoothing"),),
            per_frame=False,
            checkpoint=f"{SADTALKER}:audio2pose.",
            doc="CVAE decoder over 32-frame windows (pose mode `audio` only)",
        ),
        StageSpec(
            "face_recon",
            inputs=(_f32("image", 3, 224, 224, doc="aligned face, RGB in [0, 1]", sample="unit"),),
            outputs=(_f32("coeffs", 257, doc="id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3"),),
            per_frame=False,
            checkpoint=f"{SADTALKER}:face_3drecon.",
            doc="ResNet-50 3DMM regressor, once per avatar",
        ),
        StageSpec(
            "kp_detector",
            inputs=(_f32("image", 3, 256, 256, doc="face crop, RGB in [0, 1]", sample="unit"),),
            outputs=(_f32("kp", 15, 3, doc="canonical keypoints"),),
            per_frame=False,
            checkpoint=f"{SADTALKER}:kp_extractor.",
            doc="canonical keypoints, once per avatar",
        ),
        StageSpec(
            "mapping",
            inputs=(
                _f32("window", 70, 27, doc="27 frames of [exp 64 | angles 3 | trans 3], clamped at the ends"),
                _f32("kp_canonical", 15, 3, sample="keypoints"),
            ),
            outputs=(_f32("kp_driving", 15, 3, doc="keypoints of the frame at the window's centre"),),
            per_frame=True,
            checkpoint="mapping_00229-model.pth.tar",
            doc="mapping net + keypoint transformation (crop and resize modes)",
        ),
        StageSpec(
            "mapping_full",
            inputs=(
                _f32("window", 73, 27, doc="as `mapping`, plus crop scale and offset (3)"),
                _f32("kp_canonical", 15, 3, sample="keypoints"),
            ),
            outputs=(_f32("kp_driving", 15, 3),),
            per_frame=True,
            checkpoint="mapping_00109-model.pth.tar",
            doc="mapping net + keypoint transformation (full paste-back mode)",
        ),
        StageSpec(
            "generator",
            inputs=(
                _f32("source_image", 3, 256, 256, doc="the avatar's face crop, RGB in [0, 1]", sample="unit"),
                _f32("kp_source", 15, 3, sample="keypoints"),
                _f32("kp_driving", 15, 3, sample="keypoints"),
            ),
            outputs=(_f32("prediction", 3, 256, 256, doc="rendered face, RGB in [0, 1]"),),
            per_frame=True,
            checkpoint=f"{SADTALKER}:generator.",
            doc="dense motion + occlusion-aware SPADE generator (≈1.2 TFLOP/frame at full size)",
        ),
        StageSpec(
            "gfpgan",
            inputs=(_f32("image", 3, 512, 512, doc="face, RGB in [-1, 1]", sample="signed"),),
            outputs=(_f32("restored", 3, 512, 512, doc="enhanced face, RGB in about [-1, 1]"),),
            per_frame=True,
            checkpoint="GFPGANv1.4.pth",
            doc="GFPGAN v1.4 face enhancement (optional; fixed noise)",
        ),
        StageSpec(
            "wav2lip",
            inputs=(
                _f32("mel_window", 1, 80, 16, doc="the 16 mel frames from int(80·i/25), clamped to end at the last"),
                _f32(
                    "face",
                    6,
                    96,
                    96,
                    doc="96² face crop, BGR /255: [rows ≥ 48 zeroed ‖ the crop] (lipsync.wav2lip.face_input)",
                    sample="unit",
                ),
            ),
            outputs=(_f32("prediction", 3, 96, 96, doc="the face with lips for the audio, BGR in [0, 1]"),),
            per_frame=True,
            checkpoint="wav2lip_gan.pth",
            doc="Wav2Lip lip-sync engine, one video frame per batch row (≈7.9 GFLOP/frame; weights non-commercial)",
            max_frames=128,
        ),
        # Small steps that glue the networks into Triton ensembles (export/ensemble_steps.py).
        StageSpec(
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
        ),
        StageSpec(
            "face_to_uint8",
            inputs=(_f32("image", 3, 256, 256, doc="rendered face, RGB in about [0, 1]"),),
            outputs=(TensorIO("face", "uint8", (BATCH, 256, 256, 3), "face crop, RGB, height × width × channel"),),
            per_frame=True,
            checkpoint="",
            doc="ensemble step of `render`: clamp to [0, 1], ×255, round half to even (upstream's img_as_ubyte)",
        ),
        StageSpec(
            "enhancer_input",
            inputs=(_f32("image", 3, 256, 256, doc="rendered face, RGB in about [0, 1]"),),
            outputs=(_f32("image512", 3, 512, 512, doc="GFPGAN's input, RGB in [-1, 1]"),),
            per_frame=True,
            checkpoint="",
            doc="ensemble step of `render_enhanced`: the uint8 face, OpenCV's bilinear 2× enlargement, → [-1, 1]",
        ),
        StageSpec(
            "enhancer_output",
            inputs=(_f32("restored", 3, 512, 512, doc="GFPGAN's output, RGB in about [-1, 1]", sample="signed"),),
            outputs=(TensorIO("face", "uint8", (BATCH, 512, 512, 3), "enhanced face, RGB, height × width × channel"),),
            per_frame=True,
            checkpoint="",
            doc="ensemble step of `render_enhanced`: clamp to [-1, 1], → [0, 255], round half to even, uint8",
        ),
        StageSpec(
            "wav2lip_to_uint8",
            inputs=(_f32("prediction", 3, 96, 96, doc="Wav2Lip's output, BGR in [0, 1]"),),
            outputs=(TensorIO("face", "uint8", (BATCH, 96, 96, 3), "face crop, RGB, height × width × channel"),),
            per_frame=True,
            checkpoint="",
            doc="ensemble step of `wav2lip_render`: ×255 truncated (upstream's astype(uint8)), BGR → RGB",
            max_frames=128,
        ),
        StageSpec(
            "wav2lip_enhancer_input",
            inputs=(_f32("prediction", 3, 96, 96, doc="Wav2Lip's output, BGR in [0, 1]"),),
            outputs=(_f32("image512", 3, 512, 512, doc="GFPGAN's input, RGB in [-1, 1]"),),
            per_frame=True,
            checkpoint="",
            doc="ensemble step of `wav2lip_render_enhanced`: the uint8 face, bilinear to 512², → [-1, 1]",
        ),
    )
}
