"""The vocabulary an engine's export is described in: stages (tensor names, dtypes and shapes, with the dynamic
axes named), the ensembles that chain them, and the int8 forms some have.

One description drives the ONNX export (input/output names, dynamic axes), the sidecar JSON, the Triton
``config.pbtxt`` files and the docs, so that they cannot disagree. Each engine describes its own in
``export/engines/<engine>/``; ``export.engines`` gathers them. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

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
    # Also called directly by the gateway, once per avatar it prepares (not only inside ensembles).
    avatar_calls: bool = False

    @property
    def weights_file(self) -> str:
        """The official file its weights come from ("" for a graph without weights)."""
        return self.checkpoint.partition(":")[0]

    @property
    def weights_prefix(self) -> str:
        """The prefix of its tensors inside that file ("" for the whole file)."""
        return self.checkpoint.partition(":")[2]


def f32(name: str, *shape: Dim, doc: str = "", sample: str = "normal") -> TensorIO:
    return TensorIO(name, "float32", (BATCH, *shape), doc, sample)


def like(spec: StageSpec, tensor: str, name: str | None = None, doc: str | None = None) -> TensorIO:
    """A stage's tensor under another name (an ensemble's interface reuses its stages' dtypes and shapes)."""
    io = next(t for t in (*spec.inputs, *spec.outputs) if t.name == tensor)
    return dataclasses.replace(io, name=name or io.name, doc=io.doc if doc is None else doc)


@dataclass(frozen=True)
class EnsembleStep:
    """One model call: its inputs and outputs mapped to ensemble tensor names."""

    model: str
    inputs: tuple[tuple[str, str], ...]  # (model input, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]  # (model output, ensemble tensor)


def step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> EnsembleStep:
    return EnsembleStep(model, tuple(inputs.items()), tuple(outputs.items()))


@dataclass(frozen=True)
class EnsembleSpec:
    name: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    steps: tuple[EnsembleStep, ...]
    doc: str
    # Which of a session's calls it serves, for the queue bounds (export.repository.gateway_queue_demand):
    # `audio` (per audio block, up to max_inflight_calls a session) or `render` (per chunk, max_inflight_renders).
    calls: Literal["audio", "render"] = "render"


@dataclass(frozen=True)
class OfficialFile:
    """An official weights file: where upstream publishes it, how it is stored, and when it is needed."""

    name: str
    url: str
    # Top-level key of the torch pickle that holds the state dict; None for a flat safetensors file.
    pickle_key: str | None
    purpose: str
    # The published file's SHA-256 and size in bytes, where a public source states them (each entry names its
    # source); a file without a digest is downloaded with a warning that it is unverified.
    sha256: str | None = None
    size: int | None = None
    # `required`: fetched by a default download and checked by `export check`; `optional`: fetched with its
    # stage's flag (`download --gfpgan`); `licensed`: only once its engine's licence is accepted.
    need: Literal["required", "optional", "licensed"] = "required"
    # Needed only for these render sizes (empty: any); `replaces` names the file it stands in for at them.
    render_sizes: tuple[int, ...] = ()
    replaces: str | None = None


# (rows, seed) → inputs by name that look like what the stage is served.
SyntheticInputs = Callable[[int, int], dict[str, np.ndarray]]
# (speech file, face inputs, rows) → inputs by name built as a session builds them.
MediaInputs = Callable[[Path, np.ndarray, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Int8Form:
    """A stage served from an int8 graph on the cpu target (export/quantize.py): why, and its calibration data."""

    why: str
    synthetic_inputs: SyntheticInputs
    media_inputs: MediaInputs | None = None
    face_input: str = "face"  # the input that --calibration-faces files hold


@dataclass(frozen=True)
class EngineExport:
    """What one engine (or a part engines share, such as the enhancer) adds to the export.

    ``builders``: the module (imported only when modules are built: it needs PyTorch) whose ``BUILDERS`` maps
    each stage to the function that builds it. ``optional_stages``: exported only when asked for (their weights
    are an extra download). ``files``: the official files its stages read (a licensed engine's first one is its
    default); ``licence``: terms a user must accept before its files are fetched."""

    name: str
    stages: tuple[StageSpec, ...]
    builders: str
    ensembles: tuple[EnsembleSpec, ...] = ()
    int8: Mapping[str, Int8Form] = field(default_factory=dict)
    # Networks TensorRT must build in FP32 even on an fp16 target, and why.
    tensorrt_fp32: Mapping[str, str] = field(default_factory=dict)
    optional_stages: tuple[str, ...] = ()
    files: tuple[OfficialFile, ...] = ()
    licence: str | None = None
