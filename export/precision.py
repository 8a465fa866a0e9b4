"""Reduced-precision study: how far fp16 and bf16 runs of a stage are from fp32, on the same inputs.

Two ways to run a module in a reduced dtype (:class:`Precision`):

- ``autocast`` — ``torch.autocast(device, dtype)`` around the fp32 module: convolutions and matrix products in
  the dtype, the ops PyTorch lists (softmax, norms, ``exp``, pooling and grid sampling on the CPU) in fp32.
  What PyTorch eager serving would do.
- ``cast`` — module and floating inputs converted to the dtype: every tensor in it, as an engine built in fp16
  (TensorRT's FP16 mode) is free to do.

The error is ``export.onnx.relative_error`` (‖reduced − fp32‖₂ / ‖fp32‖₂, float64) of each output, worst over
the outputs. For the generator the study also follows the design's rule — the sampling coordinates stay fp32
(``export.models.generator``'s ``sampling_precision="fp32"``) — against letting them be reduced, over the whole
render path: mapping → generator → uint8 face (:func:`render_path_error`).

On the CPU, fp16 convolutions have only reference kernels (≈ 100× slower than fp32), some ops have no fp16 or
bf16 kernel at all (``avg_pool3d``), and the reduced-precision 2-D grid sampler returned NaN and wrong values
at some coordinates (torch 2.13). :func:`cpu_emulation` runs those ops in fp32 on the reduced-precision inputs
and rounds the result back to the dtype — what a GPU kernel does with fp16 tensors (fp16 in, fp32
accumulation, fp16 out). A GPU's fp16 grid sampler may round its pixel coordinates further than this, so the
"everything reduced" render error measured on a GPU (``bench/gpu.py``) can be larger than the CPU's.

bf16 convolutions and matrix products have fast CPU kernels only where the CPU multiplies bf16 itself (AVX-512
BF16 or AMX, :func:`cpu_has_native_bf16`); elsewhere (AVX2) oneDNN emulates them ≈ 100× slower than fp32, so
they are emulated here the same way — bf16 in, fp32 accumulation, bf16 out, what the native kernels compute.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from export.engines.sadtalker.steps import FaceToUint8
from export.models.generator import Generator, SamplingPrecision
from export.onnx import relative_error
from lipsync.cpu import cpu_flags

DTypeName = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[DTypeName, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Mode = Literal["autocast", "cast"]
MODES: tuple[Mode, ...] = ("autocast", "cast")
REDUCED_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """A dtype and how the module is brought to it (fp32 ignores the mode)."""

    dtype: DTypeName
    mode: Mode = "autocast"

    @property
    def label(self) -> str:
        return "fp32" if self.dtype == "fp32" else f"{self.dtype}/{self.mode}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


FP32 = Precision("fp32")

# ----------------------------------------------------------------------------------------- CPU emulation

_F = torch.nn.functional
# The convolutions and matrix products, as the model code calls them (functions and tensor methods): the ops
# autocast runs in its lower dtype, and those a CPU without bf16 arithmetic emulates slowly.
_CONVOLUTIONS = frozenset(
    {_F.conv1d, _F.conv2d, _F.conv3d, _F.conv_transpose1d, _F.conv_transpose2d, _F.conv_transpose3d}
)
_MATRIX_PRODUCTS = frozenset(
    {
        _F.linear,
        *(getattr(torch, name) for name in ("matmul", "mm", "bmm", "addmm", "baddbmm")),
        *(getattr(Tensor, name) for name in ("matmul", "mm", "bmm", "addmm", "baddbmm", "__matmul__", "__rmatmul__")),
    }
)
_AUTOCAST_LOWERED = _CONVOLUTIONS | _MATRIX_PRODUCTS
# Ops a reduced dtype runs in fp32 on the CPU whatever happens: fp16 convolutions (reference kernels, far too
# slow) and the grid sampler (wrong results in reduced precision).
_CPU_FP32_OPS: dict[torch.dtype, frozenset[Any]] = {
    torch.float16: _CONVOLUTIONS | {_F.grid_sample},
    torch.bfloat16: frozenset({_F.grid_sample}),
}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether PyTorch's CPU kernels multiply bf16 in hardware here: the CPU has AVX-512 BF16 or AMX, and
    neither ``ATEN_CPU_CAPABILITY`` nor ``ONEDNN_MAX_CPU_ISA`` holds PyTorch below it."""
    if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return False
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return isa == "ALL" or any(tag in isa for tag in ("BF16", "AMX", "FP16", "AVX10"))


def _cpu_fp32_ops(dtype: torch.dtype) -> frozenset[Any]:
    """The ops ``dtype`` runs in fp32 here: those above and, on a CPU without bf16 arithmetic, bf16's convolutions
    and matrix products."""
    ops = _CPU_FP32_OPS[dtype]
    if dtype == torch.bfloat16 and not cpu_has_native_bf16():
        ops |= _AUTOCAST_LOWERED
    return ops


def _map_tensors(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    """``fn`` applied to every tensor in a call's arguments or result (nested tuples, lists and dicts)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple | list):
        return type(value)(_map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    return value


class _CpuEmulation(TorchFunctionMode):
    """Runs some reduced-precision CPU ops in fp32 and rounds the result back (see the module docstring).

    A function mode sees a call before autocast lowers its inputs, so for the ops autocast lowers it does the
    lowering itself: the floating inputs are rounded to autocast's dtype, as autocast would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.emulated: set[str] = set()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        autocast = torch.is_autocast_enabled("cpu")
        lowered = autocast and func in _AUTOCAST_LOWERED
        if lowered:
            low: torch.dtype | None = torch.get_autocast_dtype("cpu")
        else:
            tensors = (a for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
            low = next((t.dtype for t in tensors if t.dtype in REDUCED_DTYPES), None)
        if low is None or low not in REDUCED_DTYPES:
            return func(*args, **kwargs)
        # Under autocast the other ops on the list (the grid sampler) are among those autocast runs in fp32.
        if func in _cpu_fp32_ops(low) and (lowered or not autocast):
            return self._in_fp32(func, low, args, kwargs, round_fp32_inputs=lowered)
        try:
            return func(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as error:
            if "not implemented for" not in str(error):
                raise
            return self._in_fp32(func, low, args, kwargs, round_fp32_inputs=lowered)

    def _in_fp32(
        self, func: Any, low: torch.dtype, args: tuple[Any, ...], kwargs: dict[str, Any], round_fp32_inputs: bool
    ) -> Any:
        self.emulated.add(getattr(func, "__name__", str(func)))
        rounded = (low, torch.float32) if round_fp32_inputs else (low,)

        def up(x: Tensor) -> Tensor:
            return x.to(low).float() if x.dtype in rounded else x

        def down(x: Tensor) -> Tensor:
            return x.to(low) if x.dtype == torch.float32 else x

        with torch.autocast("cpu", enabled=False):
            result = func(*_map_tensors(up, args), **_map_tensors(up, kwargs))
        return _map_tensors(down, result)


@contextlib.contextmanager
def cpu_emulation(device: torch.device) -> Iterator[set[str]]:
    """On the CPU, run reduced-precision ops that the CPU lacks or gets wrong in fp32, rounding back; yields the
    names of the ops it emulated. Elsewhere a no-op (a GPU has the kernels)."""
    if device.type != "cpu":
        yield set()
        return
    mode = _CpuEmulation()
    with mode:
        yield mode.emulated


# ------------------------------------------------------------------------------------------------ running


def _floating(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype) if x.is_floating_point() else x


class Runner:
    """Calls a module in one precision on fp32 inputs; outputs as a tuple, in the dtype they came out in.

    For ``cast`` the module is copied once and converted; the fp32 module is left as it is.
    """

    def __init__(self, module: nn.Module, precision: Precision, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        reduced = precision.dtype != "fp32"
        self.module = (
            copy.deepcopy(module).to(precision.torch_dtype) if reduced and precision.mode == "cast" else module
        )

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        dtype = self.precision.torch_dtype
        with torch.no_grad():
            if self.precision.dtype == "fp32":
                out = self.module(*inputs)
            elif self.precision.mode == "autocast":
                with torch.autocast(self.device.type, dtype=dtype):
                    out = self.module(*inputs)
            else:
                out = self.module(*(_floating(x, dtype) for x in inputs))
        return out if isinstance(out, tuple) else (out,)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 references without TF32 (cuDNN convolutions default to TF32 on Ampere and later GPUs)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass(frozen=True)
class StageError:
    """Worst relative error over a stage's outputs, and whether every output value was finite."""

    relative_error: float
    finite: bool


def _compare(have: Sequence[Tensor], want: Sequence[Tensor]) -> StageError:
    finite = all(bool(torch.isfinite(h).all()) for h in have)
    worst = max(relative_error(h.float(), w) for h, w in zip(have, want, strict=True))
    return StageError(worst if finite else float("inf"), finite)


def stage_errors(
    module: nn.Module,
    inputs: Sequence[Tensor],
    precisions: Sequence[Precision],
    device: torch.device,
    stop: Callable[[], bool] | None = None,
) -> dict[str, StageError]:
    """Each precision's error against fp32 (TF32 off) on the same inputs, keyed by ``Precision.label``.

    ``stop`` is asked before each precision (a time budget): once it says yes, the rest are left out of the result.
    """
    with exact_fp32(device):
        reference = Runner(module, FP32, device)(*inputs)
    errors: dict[str, StageError] = {}
    for precision in precisions:
        if stop is not None and stop():
            break
        with cpu_emulation(device):
            have = Runner(module, precision, device)(*inputs)
        errors[precision.label] = _compare(have, reference)
    return errors


# --------------------------------------------------------------------------------------------- render path


@dataclass(frozen=True)
class RenderInputs:
    """One batch of the render path: the avatar (source image, canonical and source keypoints) and the
    coefficient windows of the frames to draw."""

    window: Tensor
    kp_canonical: Tensor
    source_image: Tensor
    kp_source: Tensor

    def to(self, device: torch.device) -> RenderInputs:
        return RenderInputs(
            *(x.to(device) for x in (self.window, self.kp_canonical, self.source_image, self.kp_source))
        )


@dataclass(frozen=True)
class RenderError:
    """The render path in one precision against fp32: the generator's float output and the uint8 face."""

    relative_error: float  # of the float face in [0, 1]
    max_level_diff: int  # largest difference of a uint8 value
    mean_level_diff: float
    share_over_2_levels: float  # fraction of uint8 values more than 2 levels off
    finite: bool


def render_inputs(
    mapping: nn.Module, batch: int, window_size: tuple[int, int], image_size: int, generator: torch.Generator
) -> RenderInputs:
    """Inputs like a session's: windows of one clip (a shared base plus small per-frame changes), and the
    source keypoints made by the mapping of the clip's first window (fp32), as the gateway makes them."""
    base = torch.randn(1, *window_size, generator=generator)
    window = base + 0.3 * torch.randn(batch, *window_size, generator=generator)
    kp_canonical = (0.3 * torch.randn(1, 15, 3, generator=generator)).expand(batch, -1, -1).contiguous()
    source_image = torch.rand(1, 3, image_size, image_size, generator=generator).expand(batch, -1, -1, -1)
    with torch.no_grad():
        kp_source = mapping(base.expand(batch, -1, -1), kp_canonical)
    return RenderInputs(window, kp_canonical, source_image.contiguous(), kp_source)


def render_path_error(
    mapping: nn.Module,
    generator: Generator,
    inputs: RenderInputs,
    precision: Precision,
    coordinates: SamplingPrecision,
    device: torch.device,
    reference: tuple[Tensor, Tensor] | None = None,
) -> tuple[RenderError, tuple[Tensor, Tensor]]:
    """mapping → generator → uint8 face in ``precision``, the generator's sampling coordinates as ``coordinates``
    says, against the same path in fp32. Returns the error and the fp32 reference (pass it back to reuse it)."""
    to_uint8 = FaceToUint8()

    def path(prec: Precision, coords: SamplingPrecision) -> tuple[Tensor, Tensor]:
        kp_driving = Runner(mapping, prec, device)(inputs.window, inputs.kp_canonical)[0]
        renderer = Runner(generator.copy_with(sampling_precision=coords), prec, device)
        face = renderer(inputs.source_image, inputs.kp_source, kp_driving.float())[0].float()
        # The uint8 step is a separate fp32 model in the ensembles.
        return face, to_uint8(face)

    if reference is None:
        with exact_fp32(device), torch.no_grad():
            reference = path(FP32, "native")
    with cpu_emulation(device), torch.no_grad():
        face, levels = path(precision, coordinates)
    finite = bool(torch.isfinite(face).all())
    diff = (levels.int() - reference[1].int()).abs()
    error = RenderError(
        relative_error=relative_error(face, reference[0]) if finite else float("inf"),
        max_level_diff=int(diff.max()),
        mean_level_diff=float(diff.float().mean()),
        share_over_2_levels=float((diff > 2).float().mean()),
        finite=finite,
    )
    return error, reference


def reduced_precisions(dtypes: Sequence[DTypeName], modes: Sequence[Mode] = MODES) -> list[Precision]:
    """Every (reduced dtype, mode) pair, in order."""
    return [Precision(d, m) for d in dtypes if d != "fp32" for m in modes]


def describe_emulation(device: torch.device) -> str:
    if device.type != "cpu":
        return "none: the GPU's own kernels"
    bf16 = "" if cpu_has_native_bf16() else " (and bf16 convolutions and matrix products: no bf16 arithmetic here)"
    return (
        f"CPU: fp16 convolutions and reduced-precision grid sampling{bf16} run in fp32 on the rounded inputs and "
        "are rounded back; ops without a CPU kernel in the dtype likewise"
    )
