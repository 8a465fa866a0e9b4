"""Every exported graph declares the shapes it really returns (TensorRT and Triton read the declarations)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from export.engines import STAGES
from export.onnx import TRACE_SIZES, sample_inputs


def _declared(values: list[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


@pytest.mark.parametrize("stage", list(STAGES))
def test_declared_shapes_match_what_the_graph_returns(reduced_onnx_dir: Path, stage: str) -> None:
    path = reduced_onnx_dir / f"{stage}.onnx"
    model = onnx.load(str(path))
    declared_in, declared_out = _declared(list(model.graph.input)), _declared(list(model.graph.output))
    spec = STAGES[stage]
    assert declared_out == {t.name: list(t.shape) for t in spec.outputs}
    batch = 3
    inputs = sample_inputs(spec, batch, torch.Generator().manual_seed(0), TRACE_SIZES)
    feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
    # Every named axis has one size in a run: what the inputs give it, then what the outputs must agree with.
    sizes: dict[str, int] = {}
    for name, array in feed.items():
        for dim, actual in zip(declared_in[name], array.shape, strict=True):
            assert sizes.setdefault(dim, actual) == actual if isinstance(dim, str) else dim == actual, (name, dim)
    outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for (name, dims), array in zip(declared_out.items(), outputs, strict=True):
        assert len(dims) == array.ndim, (name, dims, array.shape)
        for dim, actual in zip(dims, array.shape, strict=True):
            if isinstance(dim, str):
                assert sizes.setdefault(dim, actual) == actual, (name, dims, array.shape)
            else:
                assert dim == actual, (name, dims, array.shape)
