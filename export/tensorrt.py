"""Build a TensorRT fp16 engine from an exported graph, by whichever route is installed, and run or time it.

Routes, in the order :func:`detect` prefers them: ONNX Runtime's TensorRT execution provider (``onnxruntime-gpu``;
the engine runs on PyTorch's CUDA tensors through I/O binding), the ``tensorrt`` Python package (likewise), or
NVIDIA's ``trtexec`` (it times the engine itself, on its own random inputs). All optional: nothing is imported
at module level, and :func:`detect` says why none is usable. ``bench/gpu.py`` uses it for the generator's
4-D-sampler graph.

Triton's onnxruntime backend passes only a fixed list of TensorRT options through (``export/repository.py``);
the options used here are ONNX Runtime's own and need not be on that list.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from export.specs import StageSpec

Route = Literal["ort", "tensorrt", "trtexec"]
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)  # where NVIDIA's containers keep it, off PATH
WORKSPACE_BYTES = 4 << 30


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def detect() -> tuple[Route | None, str]:
    """The first usable route and a description (its version or path), or (None, why none is)."""
    reasons = []
    if _installed("onnxruntime"):
        import onnxruntime as ort

        if "TensorrtExecutionProvider" in ort.get_available_providers():
            return "ort", f"onnxruntime {ort.__version__} TensorRT EP"
        reasons.append(f"onnxruntime {ort.__version__} has no TensorRT EP")
    else:
        reasons.append("no onnxruntime")
    if _installed("tensorrt"):
        return "tensorrt", "the tensorrt package"
    reasons.append("no tensorrt package")
    for candidate in (shutil.which("trtexec"), *TRTEXEC_PATHS):
        if candidate and Path(candidate).is_file():
            return "trtexec", candidate
    reasons.append("no trtexec")
    return None, "; ".join(reasons)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile over the batch axis of ``spec``'s inputs (every other axis fixed)."""

    spec: StageSpec
    max_batch: int
    opt_batch: int = 8

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for io in self.spec.inputs:
            if not all(isinstance(d, int) for d in io.shape[1:]):
                raise ValueError(f"{self.spec.name}.{io.name} has a dynamic axis other than the batch: {io.shape}")
            shapes[io.name] = (batch, *(int(d) for d in io.shape[1:]))
        return shapes

    def argument(self, batch: int) -> str:
        """``name:1x3x256x256,...`` as trtexec and ONNX Runtime's profile options write shapes."""
        return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in self.shapes(batch).items())

    @property
    def opt(self) -> int:
        return min(self.opt_batch, self.max_batch)

    def output_shape(self, batch: int) -> tuple[int, ...]:
        dims = self.spec.outputs[0].shape[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ValueError(f"{self.spec.name}'s first output has a dynamic axis other than the batch")
        return (batch, *(int(d) for d in dims))


@dataclass
class Engine:
    """A built engine: ``run`` (inputs on the GPU → first output) for the in-process routes, or ``time_batch``
    (batch → trtexec's median GPU compute ms, None if it failed) for trtexec."""

    description: str
    build_s: float
    run: Callable[[Sequence[Tensor]], Tensor] | None = None
    time_batch: Callable[[int], float | None] | None = None


def trtexec_build_command(trtexec: str, onnx_path: Path, engine: Path, profile: Profile, opt_level: int) -> list[str]:
    return [
        trtexec,
        f"--onnx={onnx_path}",
        "--fp16",
        f"--minShapes={profile.argument(1)}",
        f"--optShapes={profile.argument(profile.opt)}",
        f"--maxShapes={profile.argument(profile.max_batch)}",
        f"--builderOptimizationLevel={opt_level}",
        f"--saveEngine={engine}",
        "--skipInference",
    ]


def trtexec_time_command(trtexec: str, engine: Path, profile: Profile, batch: int) -> list[str]:
    return [trtexec, f"--loadEngine={engine}", f"--shapes={profile.argument(batch)}", "--warmUp=200", "--duration=2"]


_TRTEXEC_MEDIAN = re.compile(r"GPU Compute Time:.*?median = ([0-9.eE+-]+) ms")


def parse_trtexec_median_ms(output: str) -> float | None:
    """The median of trtexec's line ``GPU Compute Time: min = …, max = …, mean = …, median = … ms, …``."""
    match = _TRTEXEC_MEDIAN.search(output)
    return float(match.group(1)) if match else None


def build(route: Route, detail: str, onnx_path: Path, profile: Profile, work: Path, opt_level: int) -> Engine:
    """Build ``onnx_path`` in fp16 for ``profile`` by ``route`` (caches and engines under ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    if route == "ort":
        return _build_ort(detail, onnx_path, profile, work, opt_level)
    if route == "tensorrt":
        return _build_tensorrt(onnx_path, profile, opt_level)
    return _build_trtexec(detail, onnx_path, profile, work, opt_level)


def _build_ort(detail: str, onnx_path: Path, profile: Profile, work: Path, opt_level: int) -> Engine:
    import numpy as np
    import onnxruntime as ort

    cache = work / "ort-trt-cache"
    cache.mkdir(exist_ok=True)
    options = {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": str(WORKSPACE_BYTES),
        "trt_builder_optimization_level": str(opt_level),
        "trt_profile_min_shapes": profile.argument(1),
        "trt_profile_opt_shapes": profile.argument(profile.opt),
        "trt_profile_max_shapes": profile.argument(profile.max_batch),
    }
    started = time.monotonic()
    session = ort.InferenceSession(
        str(onnx_path), providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]
    )
    if session.get_providers()[0] != "TensorrtExecutionProvider":  # ONNX Runtime falls back silently
        raise RuntimeError(f"the TensorRT EP did not load (session providers: {session.get_providers()})")
    spec = profile.spec

    def run(inputs: Sequence[Tensor]) -> Tensor:
        binding = session.io_binding()
        kept = [x.contiguous() for x in inputs]
        for io, x in zip(spec.inputs, kept, strict=True):
            binding.bind_input(io.name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        out = torch.empty(profile.output_shape(kept[0].shape[0]), device=kept[0].device)
        binding.bind_output(
            spec.outputs[0].name, "cuda", out.device.index or 0, np.float32, tuple(out.shape), out.data_ptr()
        )
        torch.cuda.current_stream().synchronize()  # the inputs were written on PyTorch's stream
        session.run_with_iobinding(binding)  # returns when ONNX Runtime's stream is done
        return out

    # The engine is built on the first run if the session did not already.
    first = tuple(torch.zeros(shape, device="cuda") for shape in profile.shapes(1).values())
    run(first)
    return Engine(f"{detail}, fp16", time.monotonic() - started, run=run)


def _build_tensorrt(onnx_path: Path, profile: Profile, opt_level: int) -> Engine:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0)
    parser = trt.OnnxParser(network, logger)
    started = time.monotonic()
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser failed: {problems[:300]}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = opt_level
    optimisation = builder.create_optimization_profile()
    low, opt, high = profile.shapes(1), profile.shapes(profile.opt), profile.shapes(profile.max_batch)
    for name in low:
        optimisation.set_shape(name, low[name], opt[name], high[name])
    config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine (its log above says why)")
    engine: Any = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    spec = profile.spec

    def run(inputs: Sequence[Tensor]) -> Tensor:
        kept = [x.contiguous() for x in inputs]
        for io, x in zip(spec.inputs, kept, strict=True):
            context.set_input_shape(io.name, tuple(x.shape))
            context.set_tensor_address(io.name, x.data_ptr())
        out = torch.empty(profile.output_shape(kept[0].shape[0]), device=kept[0].device)
        context.set_tensor_address(spec.outputs[0].name, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT's execute_async_v3 failed")
        return out

    return Engine(f"tensorrt {trt.__version__}, fp16", time.monotonic() - started, run=run)


def _build_trtexec(trtexec: str, onnx_path: Path, profile: Profile, work: Path, opt_level: int) -> Engine:
    engine = work / f"{onnx_path.stem}.fp16.engine"
    started = time.monotonic()
    command = trtexec_build_command(trtexec, onnx_path, engine, profile, opt_level)
    built = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if built.returncode != 0 or not engine.is_file():
        tail = (built.stdout + built.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"trtexec exited {built.returncode} building the engine: {tail[0][:200]}")

    def time_batch(batch: int) -> float | None:
        ran = subprocess.run(
            trtexec_time_command(trtexec, engine, profile, batch), capture_output=True, text=True, check=False
        )
        return parse_trtexec_median_ms(ran.stdout) if ran.returncode == 0 else None

    return Engine(f"trtexec {trtexec}, fp16", time.monotonic() - started, time_batch=time_batch)
