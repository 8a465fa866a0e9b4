"""The stages more than one engine uses: the mel front-end and the GFPGAN v1.4 face enhancer with its output
step. Torch-free: the modules are built by :mod:`export.engines.shared.build`."""

from __future__ import annotations

from export.specs import BATCH, EngineExport, OfficialFile, StageSpec, TensorIO, f32

MEL = StageSpec(
    "mel",
    inputs=(f32("signal", "samples", doc="pre-emphasised, centre-padded 16 kHz audio", sample="signed"),),
    outputs=(f32("mel", "mel_frames", 80, doc="normalised log-mel in [-4, 4], 80 frames/s"),),
    per_frame=False,
    checkpoint="",
    doc="SadTalker's audio front-end (STFT as a convolution, Slaney mel, dB, normalisation)",
)

GFPGAN = StageSpec(
    "gfpgan",
    inputs=(f32("image", 3, 512, 512, doc="face, RGB in [-1, 1]", sample="signed"),),
    outputs=(f32("restored", 3, 512, 512, doc="enhanced face, RGB in about [-1, 1]"),),
    per_frame=True,
    checkpoint="GFPGANv1.4.pth",
    doc="GFPGAN v1.4 face enhancement (optional; fixed noise)",
)

ENHANCER_OUTPUT = StageSpec(
    "enhancer_output",
    inputs=(f32("restored", 3, 512, 512, doc="GFPGAN's output, RGB in about [-1, 1]", sample="signed"),),
    outputs=(TensorIO("face", "uint8", (BATCH, 512, 512, 3), "enhanced face, RGB, height × width × channel"),),
    per_frame=True,
    checkpoint="",
    doc="ensemble step of `render_enhanced`: clamp to [-1, 1], → [0, 255], round half to even, uint8",
)
_GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0"
FILES = (
    OfficialFile(
        "GFPGANv1.4.pth",
        f"{_GFPGAN_RELEASE}/GFPGANv1.4.pth",
        "params_ema",
        "GFPGAN v1.4 face enhancer (optional)",
        # LFS pointer https://huggingface.co/power2/TestModal/commit/fd3bdb0799a4531ed3ed6daded5f625fccb27386;
        # public manifests pin the same digest to this release address
        "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        348_632_874,
        need="optional",
    ),
)

EXPORT = EngineExport(
    "shared",
    stages=(MEL, GFPGAN, ENHANCER_OUTPUT),
    builders="export.engines.shared.build",
    optional_stages=("gfpgan",),
    files=FILES,
)
