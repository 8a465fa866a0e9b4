"""The one Python-backend model of the embedded (cpu) repository: run ``model.onnx`` in ONNX Runtime or
OpenVINO.

``python -m export repository --target cpu`` copies this file as ``<model>/1/model.py`` beside the model's
``model.onnx``; everything model-specific comes from the generated ``config.pbtxt`` (tensor names, dtypes,
``max_batch_size``, and the parameters ``onnx_file``, ``runtime``, ``intra_op_thread_count`` and
``max_rows_per_run``). It imports only numpy, the runtime and the backend's ``triton_python_backend_utils``, so
it runs in the stub without this project.

``runtime`` is ``onnxruntime`` (the default) or ``openvino``, which reads the same ONNX graph. OpenVINO is held to
fp32 arithmetic (``INFERENCE_PRECISION_HINT``: on CPUs with bf16 it would otherwise pick bf16 by itself), so an
fp32 graph gives ONNX Runtime's results within float rounding, and a QDQ int8 graph runs on its int8 kernels.

``execute`` receives the requests the dynamic batcher merged; it concatenates those with equal per-row shapes
along the batch axis, runs the graph once per group, and splits the outputs back. If a merged run fails, each
of its requests is run alone, so one bad request gets its own error and the others their results. Triton
itself rejects wrong shapes, dtypes and missing inputs against the config before a request gets here; what
only the graph can know (an index out of range, a signal too short for one STFT frame) comes back as an error
naming the model, the input shapes and ONNX Runtime's message.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ModuleNotFoundError:  # outside the Python-backend stub: only the pure helpers below are usable
    pb_utils = None

# Triton's data types (config ``data_type`` without the TYPE_ prefix) as numpy dtypes.
NUMPY_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8}

Feed = dict[str, np.ndarray]


class RequestError(ValueError):
    """A request this model cannot run; the message goes back to the client."""


def parameter(config: dict[str, Any], key: str, default: str) -> str:
    """A ``parameters { key: ... value { string_value: ... } }`` entry of the model config."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value is None or value == "" else str(value)


def group_by_row_shape(feeds: Sequence[tuple[int, Feed]], batched: bool) -> list[list[tuple[int, Feed]]]:
    """Requests that can run as one: equal shapes after the batch axis (each alone if the model has no batch)."""
    if not batched:
        return [[item] for item in feeds]
    groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, Feed]]] = {}
    for item in feeds:
        key = tuple(tuple(array.shape[1:]) for _, array in sorted(item[1].items()))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def concatenate(feeds: Sequence[Feed]) -> tuple[Feed, list[int]]:
    """One feed with the requests stacked along axis 0, and each request's number of rows."""
    rows = [len(next(iter(feed.values()))) for feed in feeds]
    if len(feeds) == 1:
        return feeds[0], rows
    return {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}, rows


def run_in_pieces(run: Any, feed: Feed, max_rows: int) -> list[np.ndarray]:
    """``run(feed)`` on at most ``max_rows`` rows at a time, outputs concatenated (0: all rows at once).

    ONNX Runtime's peak memory grows with the rows of one run (activations, and an arena that keeps its peak);
    the dynamic batcher may merge up to max_batch_size rows, so this bounds what one model instance holds.
    """
    total = len(next(iter(feed.values())))
    if max_rows <= 0 or total <= max_rows:
        return list(run(feed))
    pieces = [
        run({name: array[start : start + max_rows] for name, array in feed.items()})
        for start in range(0, total, max_rows)
    ]
    return [np.concatenate(parts) for parts in zip(*pieces, strict=True)]


def split(outputs: Sequence[np.ndarray], rows: Sequence[int]) -> list[list[np.ndarray]]:
    """Per request, its slice of every output (the inverse of :func:`concatenate`)."""
    bounds = np.cumsum([0, *rows])
    for output in outputs:
        if output.shape[0] != bounds[-1]:
            raise RuntimeError(f"an output has {output.shape[0]} rows for {bounds[-1]} input rows")
    return [[output[start:stop] for output in outputs] for start, stop in itertools.pairwise(bounds)]


class Runner:
    """A graph loaded in one runtime: ``run(feed)`` → the config's outputs, in its order."""

    def names(self) -> tuple[set[str], set[str]]:
        raise NotImplementedError

    def run(self, feed: Feed) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: Path, threads: int, outputs: list[str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        # Idle threads must not spin: a dozen model processes share the cores of the embedded server.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = outputs

    def names(self) -> tuple[set[str], set[str]]:
        return {t.name for t in self.session.get_inputs()}, {t.name for t in self.session.get_outputs()}

    def run(self, feed: Feed) -> list[np.ndarray]:
        return list(self.session.run(self.outputs, feed))

    def close(self) -> None:
        self.session = None


class OpenVinoRunner(Runner):
    def __init__(self, path: Path, threads: int, outputs: list[str]) -> None:
        import openvino  # only where a model asks for it (an optional dependency)

        core = openvino.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled: Any = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request: Any = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in outputs]

    def names(self) -> tuple[set[str], set[str]]:
        # A port may carry several tensor names: the graph's own (the ONNX name) is the one reported.
        return {port.get_any_name() for port in self.compiled.inputs}, {
            port.get_any_name() for port in self.compiled.outputs
        }

    def run(self, feed: Feed) -> list[np.ndarray]:
        results = self.request.infer(feed)
        # Copies: the request's output buffers are reused by its next inference.
        return [np.array(results[port]) for port in self.outputs]

    def close(self) -> None:
        self.request = self.compiled = None


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(tensor["name"], tensor["data_type"].removeprefix("TYPE_")) for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / parameter(config, "onnx_file", "model.onnx")
        threads = int(parameter(config, "intra_op_thread_count", "0"))
        # Rows per ONNX Runtime run (batched models only): bounds the instance's memory (see run_in_pieces).
        self.max_rows = int(parameter(config, "max_rows_per_run", "0")) if self.batched else 0

        runtime = parameter(config, "runtime", "onnxruntime")
        if runtime == "openvino":
            self.runner: Runner = OpenVinoRunner(path, threads, self.outputs)
        elif runtime == "onnxruntime":
            self.runner = OnnxRuntimeRunner(path, threads, self.outputs)
        else:
            raise RuntimeError(f"{self.name}: unknown runtime {runtime!r} (onnxruntime or openvino)")
        graph_inputs, graph_outputs = self.runner.names()
        if graph_inputs != {name for name, _ in self.inputs} or graph_outputs != set(self.outputs):
            raise RuntimeError(
                f"{self.name}: {path} has inputs {sorted(graph_inputs)} and outputs {sorted(graph_outputs)}, but the "
                f"config names {[name for name, _ in self.inputs]} → {self.outputs}; regenerate the repository"
            )
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {path.name} in {runtime} (batched={self.batched}, threads={threads})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        feeds: list[tuple[int, Feed]] = []
        for position, request in enumerate(requests):
            try:
                feeds.append((position, self._read(request)))
            except RequestError as error:
                responses[position] = self._error(str(error))
        for group in group_by_row_shape(feeds, self.batched):
            for position, outputs in self._run_group(group):
                responses[position] = outputs
        return responses

    def finalize(self) -> None:
        self.runner.close()

    # ------------------------------------------------------------------------------------------------
    def _read(self, request: Any) -> Feed:
        feed = {}
        for name, data_type in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"{self.name}: input {name!r} is missing")
            array = tensor.as_numpy()
            if array.dtype != NUMPY_DTYPES[data_type]:
                raise RequestError(f"{self.name}: input {name!r} has dtype {array.dtype}, expected {data_type}")
            feed[name] = array
        return feed

    def _run_group(self, group: list[tuple[int, Feed]]) -> list[tuple[int, Any]]:
        feed, rows = concatenate([item[1] for item in group])
        try:
            outputs = run_in_pieces(self.runner.run, feed, self.max_rows)
            # Without a batch axis a group is one request, whose outputs need not have its inputs' rows.
            parts = split(outputs, rows) if self.batched else [outputs]
        except Exception as error:  # neither runtime's errors have a common base class
            if len(group) > 1:  # find the culprit: the others still get their results
                return [result for item in group for result in self._run_group([item])]
            shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in feed.items())
            return [(group[0][0], self._error(f"{self.name}: inference failed on {shapes}: {error}"))]
        return [(position, self._response(arrays)) for (position, _), arrays in zip(group, parts, strict=True)]

    def _response(self, arrays: list[np.ndarray]) -> Any:
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in zip(self.outputs, arrays, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
