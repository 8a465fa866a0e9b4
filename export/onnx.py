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

from export.engines import STAGES
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
    declare_shapes(path, spec)
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


def declare_shapes(path: Path, spec: StageSpec) -> None:
    """Write the spec's shapes into the graph's declared inputs and outputs.

    The TorchScript exporter's shape inference can name output axes wrongly (the generator's prediction came out
    as ``[batch, 3, batch, …]``); ONNX Runtime ignores that, but TensorRT and Triton's auto-complete read it.
    """
    import onnx

    model = onnx.load(str(path))
    for declared, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        by_name = {t.name: t for t in tensors}
        for value in declared:
            tensor = by_name.get(value.name)
            if tensor is None:
                continue
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for dim in tensor.shape:
                entry = shape.dim.add()
                if isinstance(dim, str):
                    entry.dim_param = dim
                else:
                    entry.dim_value = dim
    onnx.save(model, str(path))


def relative_error(have: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """‖have − want‖₂ / ‖want‖₂ in float64 (the measure every parity bound in this project uses)."""
    have64, want64 = (
        (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64))
        for x in (have, want)
    )
    denominator = float(np.linalg.norm(want64))
    return float(np.linalg.norm(have64 - want64)) / max(denominator, 1e-30)


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


# Concrete sizes for named dynamic axes other than the batch, used for tracing and parity inputs.
TRACE_SIZES: dict[str, int] = {"samples": 800 + 200 * 19, "mel_frames": 20}
# Parity bound for every exported graph against its PyTorch module (fp32).
PARITY_TOLERANCE = 1e-4


def opset_for(stage: str, grid_sample: str) -> int:
    """5-D GridSample needs opset 20; everything else (and the TensorRT 4-D form) stays at the stage's."""
    return 20 if stage == "generator" and grid_sample == "5d" else STAGES[stage].opset


def export_and_check(
    stage: str, module: nn.Module, out_dir: Path, *, grid_sample: str, provenance: dict[str, Any], check: bool
) -> Path:
    """Export one stage into ``out_dir/<stage>.onnx``; with ``check``, record parity in the sidecar or fail."""
    spec = STAGES[stage]
    path = export_stage(
        spec,
        module,
        out_dir / f"{stage}.onnx",
        opset=opset_for(stage, grid_sample),
        sizes=TRACE_SIZES,
        provenance=provenance,
    )
    if check:
        parity = check_parity(spec, module, path, sizes=TRACE_SIZES)
        sidecar = json.loads(path.with_suffix(".json").read_text())
        sidecar["parity"] = {"relative_error": parity.relative_error, "tolerance": PARITY_TOLERANCE}
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if not parity.finite or parity.worst > PARITY_TOLERANCE:
            raise RuntimeError(
                f"{stage}: ONNX Runtime differs from PyTorch (relative error {parity.relative_error}, "
                f"finite={parity.finite}; bound {PARITY_TOLERANCE})"
            )
    return path
