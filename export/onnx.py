"""Export a stage to ONNX from its spec, write its sidecar, and check it against PyTorch.

The legacy TorchScript exporter (``dynamo=False``) is used: it names every tensor as the spec says and
handles the dynamic batch axis of these convolutional graphs; it restores training flags after export,
so the module is put in eval mode first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.specs import StageSpec, TensorIO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parity:
    """Worst relative error ‖onnx − torch‖₂ / ‖torch‖₂ over outputs, per batch size tried."""

    relative_error: dict[int, float]
    finite: bool

    @property
    def worst(self) -> float:
        return max(self.relative_error.values())


def sample_inputs(
    spec: StageSpec, batch: int, generator: torch.Generator, sizes: dict[str, int] | None = None
) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs shaped as the spec says; named dynamic axes other than batch come from ``sizes``."""
    sizes = {"batch": batch, **(sizes or {})}
    return tuple(_sample(t, sizes, generator) for t in spec.inputs)


def _sample(io: TensorIO, sizes: dict[str, int], generator: torch.Generator) -> torch.Tensor:
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in io.shape)
    if io.sample.startswith("int:"):
        return torch.randint(0, int(io.sample[4:]), shape, generator=generator, dtype=getattr(torch, io.dtype))
    if io.sample == "unit":
        return torch.rand(shape, generator=generator)
    if io.sample == "signed":
        return torch.rand(shape, generator=generator) * 2 - 1
    scale = 0.3 if io.sample == "keypoints" else 1.0
    return torch.randn(shape, generator=generator) * scale


def _outputs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(*inputs)
    return out if isinstance(out, tuple) else (out,)


def export_stage(
    spec: StageSpec,
    module: nn.Module,
    path: Path,
    *,
    opset: int | None = None,
    sizes: dict[str, int] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (ONNX) and ``path.with_suffix('.json')`` (the sidecar). Returns the ONNX path."""
    module.eval()
    opset = opset or spec.opset
    example = sample_inputs(spec, 2, torch.Generator().manual_seed(0), sizes)
    dynamic_axes = {t.name: t.dynamic_axes for t in (*spec.inputs, *spec.outputs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )
    module.eval()
    sidecar = {
        "stage": spec.name,
        "doc": spec.doc,
        "opset": opset,
        "inputs": [_describe(t) for t in spec.inputs],
        "outputs": [_describe(t) for t in spec.outputs],
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "checkpoint": spec.checkpoint,
        **(provenance or {}),
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("exported %s → %s", spec.name, path)
    return path


def relative_error(have: np.ndarray, want: np.ndarray) -> float:
    """‖have − want‖₂ / ‖want‖₂ in float64 (the measure every parity bound in this project uses)."""
    want = np.asarray(want, dtype=np.float64)
    denominator = float(np.linalg.norm(want))
    return float(np.linalg.norm(np.asarray(have, dtype=np.float64) - want)) / max(denominator, 1e-30)


def _describe(t: TensorIO) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "doc": t.doc}


def check_parity(
    spec: StageSpec,
    module: nn.Module,
    path: Path,
    *,
    batches: tuple[int, ...] = (1, 3),
    sizes: dict[str, int] | None = None,
    seed: int = 1,
) -> Parity:
    """Run the ONNX graph in ONNX Runtime and the module in PyTorch on the same fresh random inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module.eval()
    generator = torch.Generator().manual_seed(seed)
    errors: dict[int, float] = {}
    finite = True
    for batch in batches:
        inputs = sample_inputs(spec, batch, generator, sizes)
        expected = _outputs(module, inputs)
        feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
        got = session.run([t.name for t in spec.outputs], feed)
        worst = 0.0
        for want, have in zip(expected, got, strict=True):
            want64 = want.double().numpy()
            finite &= bool(np.isfinite(have).all())
            worst = max(worst, relative_error(np.asarray(have), want64))
        errors[batch] = worst
    return Parity(errors, finite)
