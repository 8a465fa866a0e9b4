"""GPU readiness benchmark: every stage's time per item, peak memory and reduced-precision error, in one command.

    python bench/gpu.py                        # on a CUDA GPU: full size, every measurement (< 8 min on an H100)
    python bench/gpu.py --quick                # batches 1, 8, 32, fewer repeats, compile the renderers (< 3 min)
    python bench/gpu.py --device cpu --quick   # reduced architecture, batch 1-2, fp32 + bf16 (< 2 min; CI)

Needs only PyTorch, numpy and this repository: copy the repository to a bare GPU machine and run it from its
root. Full-size stages carry synthetic weights in the official checkpoint layouts, made in memory (the values
do not change the cost; no files, no downloads). Optional: `onnx` + `onnxruntime-gpu` with the TensorRT
execution provider, or the `tensorrt` package, or `trtexec` on PATH — then the generator's 4-D-sampler graph
is also built in TensorRT fp16 and timed; without them one line says so and the run goes on.

For every stage (mel, audio2exp, audio2pose, mapping, kp_detector, face_recon, the generator in both sampler
forms, gfpgan, and wav2lip where export.stages builds it):
  - time per item at each batch size (1, 4, 8, 16, 32; generator, gfpgan and wav2lip up to 64) in fp32, fp16 and
    bf16 — PyTorch eager (autocast) and torch.compile where it works: CUDA events, warm-up, median of repeats,
    inputs rotated between repeats so that caches do not flatter;
  - peak GPU memory per batch size;
  - relative L2 error of fp16/bf16 against fp32 on the same inputs (autocast, and the whole module cast);
  - the render path (mapping -> generator -> uint8 face) in fp16/bf16 with the sampling coordinates in fp32 (the
    design's rule) and without;
  - an ESTIMATE of the live sessions one such GPU serves at 25 fps per engine, computed from the times above.
Writes DIR/gpu-bench.md and DIR/gpu-bench.json (--out DIR) and prints the report, its main table last.
docs/gpu.md explains every column.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import logging
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export import precision, tensorrt
from export.engines import STAGES
from export.models.generator import Generator, GridSampleForm, SamplingPrecision
from export.onnx import TRACE_SIZES, export_stage, opset_for, relative_error, sample_inputs
from export.precision import DTypeName
from export.stages import BUILDERS, StageFactory, Variant
from export.synthetic import SyntheticWeights
from lipsync.audio import FPS, HOP, MEL_FRAMES_PER_SECOND, N_FFT

log = logging.getLogger("bench.gpu")
REPO_ROOT = Path(__file__).resolve().parent.parent

SCHEMA = "lipsync-triton/gpu-bench/1"
# The stages measured, in report order; those export.stages does not build (yet) are left out and named.
STAGE_ORDER = ("mel", "audio2exp", "audio2pose", "mapping", "kp_detector", "face_recon", "generator", "gfpgan")
OPTIONAL_STAGES = ("wav2lip",)
# Per-frame renderers: measured up to the largest batch.
HEAVY = ("generator", "gfpgan", "wav2lip")
# Video frames one item of a stage stands for (the rest: one frame per item). mel's item is a centre-padded
# span of TRACE_SIZES["samples"]: (samples − N_FFT) / HOP + 1 mel frames, 80 of them per second of audio.
_MEL_FRAMES = (TRACE_SIZES["samples"] - N_FFT) // HOP + 1
FRAMES_PER_ITEM = {"mel": _MEL_FRAMES * FPS / MEL_FRAMES_PER_SECOND, "audio2pose": 32.0}
# Engines: the stages each live frame passes through. kp_detector and face_recon run once per avatar;
# audio2pose only in the `pose=audio` mode (one 32-frame window per 32 frames): left out.
ENGINES: dict[str, tuple[str, ...]] = {
    "SadTalker": ("mel", "audio2exp", "mapping", "generator"),
    "SadTalker + GFPGAN": ("mel", "audio2exp", "mapping", "generator", "gfpgan"),
    "Wav2Lip": ("mel", "wav2lip"),
    "Wav2Lip + GFPGAN": ("mel", "wav2lip", "gfpgan"),
}
SERVING_MAX_BATCH = 32  # export.repository's default frame_batch: the largest batch Triton forms
ESTIMATE_LABEL = "ESTIMATE (computed from the per-stage times of this run, not measured end to end)"


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Row:
    """One measured module: a stage, or the generator in one sampler form."""

    name: str
    stage: str
    form: GridSampleForm | None = None  # the generator's sampler form

    @property
    def heavy(self) -> bool:
        return self.stage in HEAVY


@dataclass(frozen=True)
class Settings:
    device: torch.device
    quick: bool
    reduced: bool
    batches: tuple[int, ...]
    heavy_batches: tuple[int, ...]
    dtypes: tuple[DTypeName, ...]  # timed
    error_dtypes: tuple[DTypeName, ...]  # in the precision study
    error_batch: int
    render_modes: tuple[precision.Mode, ...]  # of the render-path study
    precision_reserve_s: float  # kept for the precision study, which runs after the eager timings
    warmup: int
    min_repeats: int
    max_repeats: int
    target_s: float  # aim for about this much measured time per configuration
    rotations: int  # distinct input sets cycled through
    budget_s: float
    compile: bool
    compile_dtypes: tuple[DTypeName, ...]
    compile_rows: tuple[str, ...] | None  # None: every row
    trt_max_batch: int
    trt_opt_level: int
    parts: frozenset[str]
    only: tuple[str, ...] | None
    out: Path
    checkpoints: Path | None  # official files instead of synthetic weights

    def batches_for(self, row: Row) -> tuple[int, ...]:
        return self.heavy_batches if row.heavy else self.batches


PARTS = ("precision", "timing", "compile", "tensorrt")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if present")
    parser.add_argument("--quick", action="store_true", help="fewer batches, repeats and compiles (GPU < 3 min)")
    parser.add_argument(
        "--size",
        choices=("auto", "full", "reduced"),
        default="auto",
        help="full = official architecture (synthetic weights), reduced = the test architecture; auto: full on a "
        "GPU, reduced on the CPU",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="full size with the official files in DIR instead of synthetic weights (needs safetensors)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "gpu-bench", help="report directory")
    parser.add_argument("--stages", default="", help="comma-separated rows or stages to measure (default: all)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--dtypes", default="", help="comma-separated subset of fp32,fp16,bf16 (default by device)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA only")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds for the whole run (default by mode)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (default: PyTorch's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every measurement as it is taken")
    return parser.parse_args(argv)


def _bf16_native() -> bool:
    """Whether the GPU computes bf16 itself (Ampere and later), not by emulation."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older PyTorch: no emulation to exclude
        return bool(torch.cuda.is_bf16_supported())


def make_settings(args: argparse.Namespace) -> Settings:
    settings = _default_settings(args)
    if not args.dtypes:
        return settings
    chosen = [d for d in args.dtypes.split(",") if d]
    if unknown := set(chosen) - set(precision.DTYPES):
        raise SystemExit(f"--dtypes: unknown {sorted(unknown)}; choose from {', '.join(precision.DTYPES)}")
    dtypes = tuple(d for d in precision.DTYPES if d in chosen)
    return replace(settings, dtypes=dtypes, error_dtypes=tuple(d for d in dtypes if d != "fp32"))


def _default_settings(args: argparse.Namespace) -> Settings:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device (torch.cuda.is_available() is False)")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    cuda = device.type == "cuda"
    reduced = args.size == "reduced" or (args.size == "auto" and not cuda and args.checkpoints is None)
    if reduced and args.checkpoints is not None:
        raise SystemExit("--checkpoints needs the full size (--size full)")
    parts = frozenset(p for p in args.parts.split(",") if p)
    if unknown := parts - set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    only = tuple(s for s in args.stages.split(",") if s) or None
    compile_ = args.compile == "on" or (args.compile == "auto" and cuda)
    if cuda:
        bf16 = _bf16_native()
        dtypes: tuple[DTypeName, ...] = ("fp32", "fp16", "bf16") if bf16 else ("fp32", "fp16")
        base = Settings(
            device=device,
            quick=args.quick,
            reduced=reduced,
            batches=(1, 4, 8, 16, 32),
            heavy_batches=(1, 4, 8, 16, 32, 64),
            dtypes=dtypes,
            error_dtypes=tuple(d for d in dtypes if d != "fp32"),
            error_batch=4,
            render_modes=precision.MODES,
            precision_reserve_s=30.0,
            warmup=2,
            min_repeats=3,
            max_repeats=50,
            target_s=0.25,
            rotations=3,
            budget_s=args.budget or 450.0,
            compile=compile_,
            compile_dtypes=(*(d for d in dtypes if d != "fp32"), "fp32"),
            compile_rows=None,
            trt_max_batch=16,
            trt_opt_level=3,
            parts=parts,
            only=only,
            out=args.out,
            checkpoints=args.checkpoints,
        )
        if args.quick:
            base = replace(
                base,
                batches=(1, 8, 32),
                heavy_batches=(1, 8, 32),
                warmup=1,
                min_repeats=3,
                max_repeats=20,
                target_s=0.1,
                budget_s=args.budget or 160.0,
                compile_dtypes=("fp16",),
                compile_rows=("generator_4d", "gfpgan", "wav2lip"),
                trt_max_batch=8,
                trt_opt_level=2,
            )
        return base
    # CPU: bf16 is timed only where the CPU multiplies bf16 itself (AVX-512 BF16, AMX): elsewhere oneDNN emulates
    # it ≈ 100× slower than fp32, which says nothing about a GPU. fp16 convolutions have only reference loops.
    # Both are still studied for their error, emulated (export.precision: the same arithmetic, in fp32).
    timed: tuple[DTypeName, ...] = ("fp32", "bf16") if precision.cpu_has_native_bf16() else ("fp32",)
    return Settings(
        device=device,
        quick=args.quick,
        reduced=reduced,
        batches=(1, 2) if args.quick else (1, 2, 4),
        heavy_batches=(1, 2) if args.quick else (1, 2, 4),
        dtypes=timed,
        error_dtypes=("bf16",) if args.quick else ("fp16", "bf16"),
        error_batch=1 if args.quick else 2,
        render_modes=("cast",) if args.quick else precision.MODES,
        precision_reserve_s=40.0 if args.quick else 120.0,
        warmup=1,
        min_repeats=3,
        max_repeats=10,
        target_s=0.3,
        rotations=2,
        budget_s=args.budget or (90.0 if args.quick else 900.0),
        compile=compile_,
        compile_dtypes=("bf16",),
        compile_rows=("generator_4d",),
        trt_max_batch=0,
        trt_opt_level=0,
        parts=parts,
        only=only,
        out=args.out,
        checkpoints=args.checkpoints,
    )


class Clock:
    """The run's time budget: phases check what is left before starting something."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, reserve_s: float = 0.0) -> float:
        """Seconds left before the budget minus ``reserve_s`` (kept for later phases) is spent."""
        return self.budget_s - reserve_s - self.elapsed()

    def spent(self, reserve_s: float = 0.0) -> Callable[[], bool]:
        """A question to ask before each piece of work: is the budget (minus ``reserve_s``) spent?"""
        return lambda: self.left(reserve_s) <= 0


SKIPPED_BUDGET = "skipped: time budget"


class BudgetSpent(Exception):
    """No time is left for even one timed call."""


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[], None]]:
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal; else nothing (the log says it all)."""
    bar: Any = None
    if sys.stderr.isatty() and installed("tqdm"):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=what, leave=False)
    try:
        yield (lambda: bar.update(1)) if bar is not None else (lambda: None)
    finally:
        if bar is not None:
            bar.close()


# -------------------------------------------------------------------------------------------------- rows


@dataclass
class Measured:
    """A row's module (fp32, on the CPU between uses) and what the run found out about it."""

    row: Row
    module: nn.Module | None
    status: str = "ok"
    gflop_per_item: float | None = None
    params_m: float | None = None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_rows(settings: Settings) -> tuple[list[Measured], list[str]]:
    """Every row's module; stages that are not built here (yet) come back as notes."""
    notes: list[str] = []
    names = [s for s in STAGE_ORDER if s in BUILDERS]
    for stage in OPTIONAL_STAGES:
        if stage in BUILDERS and stage in STAGES:
            names.append(stage)
        else:
            notes.append(f"{stage}: not built (export.stages has no `{stage}` stage yet)")
    factory = None
    if settings.reduced or settings.checkpoints is not None:
        factory = StageFactory(Variant(checkpoints=None if settings.reduced else settings.checkpoints))
    weights = None if factory is not None else SyntheticWeights(seed=0)
    measured: list[Measured] = []
    for stage in names:
        rows = (
            [Row("generator_5d", stage, "5d"), Row("generator_4d", stage, "4d")]
            if stage == "generator"
            else [Row(stage, stage)]
        )
        rows = [r for r in rows if settings.only is None or r.name in settings.only or r.stage in settings.only]
        if not rows:
            continue
        try:
            started = time.monotonic()
            if factory is not None:
                module = factory.build(stage)
            else:
                # The variant only picks forms here: every weight comes from `weights`.
                module = BUILDERS[stage](Variant(checkpoints=None), weights).eval()
            log.debug("built %s in %.1f s", stage, time.monotonic() - started)
        except Exception as error:  # a stage that cannot be built is reported, not fatal
            log.warning("could not build %s: %s", stage, error)
            measured += [Measured(r, None, status=f"not built: {type(error).__name__}: {error}") for r in rows]
            continue
        for row in rows:
            if row.form is not None:
                assert isinstance(module, Generator)
                measured.append(Measured(row, module.copy_with(grid_sample=row.form)))
            else:
                measured.append(Measured(row, module))
    if weights is not None:
        weights.clear()
    return measured, notes


def rotated_inputs(row: Row, batch: int, count: int, device: torch.device, seed: int) -> list[tuple[Tensor, ...]]:
    """``count`` distinct input sets of ``batch`` items, on ``device``."""
    spec = STAGES[row.stage]
    generator = torch.Generator().manual_seed(seed)
    return [tuple(x.to(device) for x in sample_inputs(spec, batch, generator, TRACE_SIZES)) for _ in range(count)]


def flops_per_item(item: Measured, device: torch.device) -> float:
    """FLOPs of one item (convolutions and matrix products; a multiply-add is 2), as bench/stages.py counts."""
    assert item.module is not None
    module = item.module.to(device)
    try:
        inputs = rotated_inputs(item.row, 1, 1, device, seed=0)[0]
        module.requires_grad_(False)  # FlopCounterMode's module tracker cannot run under no_grad; this is the same
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
        return float(counter.get_total_flops())
    except Exception as error:
        log.warning("could not count the FLOPs of %s: %s", item.row.name, _short(error))
        return math.nan
    finally:
        item.module = module.to("cpu")
        _free(device)


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    row: str
    dtype: str
    runtime: str  # eager | compile | tensorrt
    batch: int
    status: str  # ok | oom | skipped: … | error: …
    ms_per_call: float | None = None
    ms_per_item: float | None = None
    repeats: int = 0
    peak_mib: float | None = None


class _Timer:
    """Times calls with CUDA events on the current stream (GPU) or the wall clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pairs: list[tuple[Any, Any]] = []
        self._wall: list[float] = []

    def time(self, call: Callable[..., object], inputs: tuple[Tensor, ...]) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(*inputs)
            end.record()
            self._pairs.append((start, end))
        else:
            began = time.perf_counter()
            call(*inputs)
            self._wall.append(1e3 * (time.perf_counter() - began))

    def milliseconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [float(start.elapsed_time(end)) for start, end in self._pairs]
        return list(self._wall)


def measure(
    call: Callable[..., object],
    input_sets: Sequence[tuple[Tensor, ...]],
    settings: Settings,
    clock: Clock | None = None,
    reserve_s: float = 0.0,
) -> tuple[float, int, float | None]:
    """Median milliseconds per call, the repeats it took, and peak GPU MiB (None on the CPU).

    Warm-up calls first (the last one, timed, sizes the number of repeats to about ``target_s``); then each
    repeat takes the next input set, so no call reuses the previous call's inputs. With a ``clock``, the repeats
    are cut to what fits in the time left (down to 1, below ``min_repeats``); :class:`BudgetSpent` when not one
    fits.
    """
    cuda = settings.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(settings.device)
    for i in range(settings.warmup - 1):
        call(*input_sets[i % len(input_sets)])
    probe = _Timer(settings.device)
    probe.time(call, input_sets[(settings.warmup - 1) % len(input_sets)])
    one = max(probe.milliseconds()[0], 1e-3)
    repeats = min(settings.max_repeats, max(settings.min_repeats, math.ceil(1e3 * settings.target_s / one)))
    if clock is not None:
        fit = math.floor(1e3 * clock.left(reserve_s) / one)
        if fit < 1:
            raise BudgetSpent(f"{clock.left(reserve_s):.1f} s left, one call takes {one / 1e3:.1f} s")
        repeats = min(repeats, fit)
    timer = _Timer(settings.device)
    for i in range(repeats):
        timer.time(call, input_sets[(settings.warmup + i) % len(input_sets)])
    times = timer.milliseconds()
    peak = torch.cuda.max_memory_allocated(settings.device) / 2**20 if cuda else None
    return statistics.median(times), repeats, peak


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Autocast(nn.Module):
    """``module`` under autocast: one callable per dtype, so torch.compile sees the whole region."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *inputs: Tensor) -> Any:
        if self.dtype == torch.float32:
            return self.module(*inputs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*inputs)


def time_row(
    item: Measured,
    dtype: DTypeName,
    runtime: str,
    settings: Settings,
    clock: Clock,
    reserve_s: float,
    tick: Callable[[], None],
) -> list[Timing]:
    """One row in one dtype and runtime at every batch size (larger batches skipped after an OOM)."""
    assert item.module is not None
    device = settings.device
    batches = list(settings.batches_for(item.row))
    if runtime == "compile":
        # A first call with batch > 1 lets the compiled graph keep the batch dynamic; batch 1 is specialised.
        batches = [b for b in batches if b > 1] + [b for b in batches if b == 1]
    results: list[Timing] = []
    module = item.module.to(device)
    wrapper: nn.Module = _Autocast(module, precision.DTYPES[dtype], device.type)
    call: Callable[..., object] = wrapper
    compile_started = time.monotonic()
    if runtime == "compile":
        call = torch.compile(wrapper)
    stop: str | None = None
    ms_per_item: float | None = None  # of the last batch measured: what the next one's calls will roughly cost
    for batch in batches:
        if stop is None and clock.left(reserve_s) <= 0:
            stop = SKIPPED_BUDGET
        # Warm-up plus one repeat must fit, as far as the batch before says.
        needed_s = None if ms_per_item is None else (settings.warmup + 1) * ms_per_item * batch / 1e3
        if stop is None and needed_s is not None and needed_s > clock.left(reserve_s):
            stop = SKIPPED_BUDGET
        if stop is not None:
            results.append(Timing(item.row.name, dtype, runtime, batch, stop))
            tick()
            continue
        try:
            sets = rotated_inputs(item.row, batch, settings.rotations, device, seed=batch)
            if runtime == "compile" and batch > 1:
                # torch.compile's documented way to keep one dimension dynamic from the first compile (no public
                # alias in torch 2.13); without it batch 4 compiles static and batch 8 compiles again.
                for inputs in sets:
                    for x in inputs:
                        torch._dynamo.maybe_mark_dynamic(x, 0)
            with torch.no_grad():
                ms, repeats, peak = measure(call, sets, settings, clock, reserve_s)
            results.append(Timing(item.row.name, dtype, runtime, batch, "ok", ms, ms / batch, repeats, peak))
            ms_per_item = ms / batch
            log.debug("%s %s %s batch %d: %.3f ms/item", item.row.name, dtype, runtime, batch, ms / batch)
        except BudgetSpent as spent:
            log.info("%s %s %s batch %d: skipped (%s)", item.row.name, dtype, runtime, batch, spent)
            results.append(Timing(item.row.name, dtype, runtime, batch, SKIPPED_BUDGET))
            stop = SKIPPED_BUDGET
        except Exception as error:
            if _is_oom(error):
                results.append(Timing(item.row.name, dtype, runtime, batch, "oom"))
                stop = "skipped: out of memory at a smaller batch"
            else:
                log.warning("%s %s %s batch %d failed: %s", item.row.name, dtype, runtime, batch, _short(error))
                results.append(Timing(item.row.name, dtype, runtime, batch, f"error: {_short(error)}"))
                stop = "skipped: failed at a smaller batch" if runtime == "eager" else "skipped: compile failed"
        finally:
            sets = []
            _free(device)
        tick()
    if runtime == "compile":
        log.info("%s %s compiled and timed in %.0f s", item.row.name, dtype, time.monotonic() - compile_started)
        torch.compiler.reset()
    item.module = module.to("cpu")
    _free(device)
    return results


# ------------------------------------------------------------------------------------------ precision study


def precision_study(
    items: list[Measured], settings: Settings, clock: Clock, reserve_s: float = 0.0
) -> list[dict[str, Any]]:
    """Per-row errors (into each item) and the render path's errors (returned).

    Once the budget (less ``reserve_s``, kept for later phases) is spent, the cases not begun are marked
    skipped: a case already running is not cut short.
    """
    device = settings.device
    precisions = precision.reduced_precisions(settings.error_dtypes)
    spent = clock.spent(reserve_s)
    for item in items:
        if item.module is None:
            continue
        if spent():
            item.errors.update({p.label: {"status": SKIPPED_BUDGET} for p in precisions})
            continue
        started = time.monotonic()
        try:
            module = item.module.to(device)
            inputs = rotated_inputs(item.row, settings.error_batch, 1, device, seed=1234)[0]
            for label, error in precision.stage_errors(module, inputs, precisions, device, stop=spent).items():
                item.errors[label] = {"relative_error": error.relative_error, "finite": error.finite}
            for p in precisions:  # those the budget left out
                item.errors.setdefault(p.label, {"status": SKIPPED_BUDGET})
        except Exception as error:
            log.warning("precision study of %s failed: %s", item.row.name, _short(error))
            item.errors["failed"] = {"error": _short(error)}
        finally:
            item.module = item.module.to("cpu")
            _free(device)
        log.info("precision %s: %s (%.1f s)", item.row.name, _format_errors(item.errors), time.monotonic() - started)
    return render_path_study(items, settings, clock, reserve_s)


def _format_errors(errors: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{k} {v['relative_error']:.2e}" if v.get("relative_error") is not None else f"{k} {v.get('status', 'err')}"
        for k, v in errors.items()
    )


def render_path_study(
    items: list[Measured], settings: Settings, clock: Clock, reserve_s: float = 0.0
) -> list[dict[str, Any]]:
    """mapping → generator (each form) → uint8 in each reduced dtype and mode, coordinates fp32 vs native.

    Cases not begun when the budget (less ``reserve_s``) is spent come back with status "skipped: time budget".
    """
    by_name = {item.row.name: item for item in items if item.module is not None}
    mapping = by_name.get("mapping")
    generators = [by_name[n] for n in ("generator_5d", "generator_4d") if n in by_name]
    if mapping is None or mapping.module is None or not generators:
        log.info("render path study skipped: needs mapping and a generator")
        return []
    device = settings.device
    results: list[dict[str, Any]] = []
    image_size = 256
    inputs = precision.render_inputs(
        mapping.module, settings.error_batch, (70, 27), image_size, torch.Generator().manual_seed(7)
    ).to(device)
    mapping_module = mapping.module.to(device)
    coordinates: tuple[SamplingPrecision, ...] = ("fp32", "native")
    try:
        for item in generators:
            assert isinstance(item.module, Generator) and item.row.form is not None
            generator = item.module.to(device)
            reference = None
            for prec in precision.reduced_precisions(settings.error_dtypes, settings.render_modes):
                for coords in coordinates:
                    entry = {"form": item.row.form, "dtype": prec.dtype, "mode": prec.mode, "coordinates": coords}
                    if clock.left(reserve_s) <= 0:
                        results.append({**entry, "status": SKIPPED_BUDGET})
                        continue
                    try:
                        error, reference = precision.render_path_error(
                            mapping_module, generator, inputs, prec, coords, device, reference
                        )
                        results.append({**entry, "status": "ok", **asdict(error)})
                        log.debug("render path %s %s coordinates %s: %s", item.row.form, prec.label, coords, error)
                    except Exception as error_:
                        log.warning("render path %s %s failed: %s", item.row.form, prec.label, _short(error_))
                        results.append({**entry, "status": f"error: {_short(error_)}"})
            item.module = generator.to("cpu")
            _free(device)
    finally:
        mapping.module = mapping_module.to("cpu")
        _free(device)
    return results


# ------------------------------------------------------------------------------------------------ TensorRT


@dataclass
class TensorRTResult:
    status: str  # one line: what ran, or why not
    route: str | None = None
    build_s: float | None = None
    max_batch: int | None = None
    relative_error_vs_fp32: float | None = None
    max_level_diff: int | None = None
    timings: list[Timing] = field(default_factory=list)


def tensorrt_phase(items: list[Measured], settings: Settings, clock: Clock) -> TensorRTResult:
    """The generator's 4-D-sampler graph in TensorRT fp16: build, accuracy against fp32 PyTorch, time."""
    if settings.device.type != "cuda":
        return TensorRTResult("TensorRT: not run (needs a CUDA device)")
    route, detail = tensorrt.detect()
    if route is None:
        return TensorRTResult(f"TensorRT: not available ({detail}); skipped")
    item = next((i for i in items if i.row.name == "generator_4d" and i.module is not None), None)
    if item is None or not isinstance(item.module, Generator):
        return TensorRTResult("TensorRT: skipped (generator_4d is not measured in this run)")
    needs = 90.0 if settings.quick else 150.0
    if clock.left() < needs:
        return TensorRTResult(
            f"TensorRT: skipped (time budget: {clock.left():.0f} s left, a build takes ≈ {needs:.0f} s)"
        )
    work = settings.out / "tensorrt"
    onnx_path = work / "generator_4d.onnx"
    profile = tensorrt.Profile(STAGES["generator"], settings.trt_max_batch)
    try:
        started = time.monotonic()
        work.mkdir(parents=True, exist_ok=True)
        export_stage(
            STAGES["generator"],
            copy.deepcopy(item.module).to("cpu").float().eval(),
            onnx_path,
            opset=opset_for("generator", "4d"),
            sizes=TRACE_SIZES,
        )
        log.info("exported %s in %.0f s", onnx_path, time.monotonic() - started)
        engine = tensorrt.build(route, detail, onnx_path, profile, work, settings.trt_opt_level)
        log.info("TensorRT engine (%s) built in %.0f s", engine.description, engine.build_s)
        result = TensorRTResult(
            f"TensorRT ({engine.description}): generator_4d built in {engine.build_s:.0f} s "
            f"(batch 1–{profile.max_batch}) and timed",
            route,
            engine.build_s,
            profile.max_batch,
        )
        batches = [b for b in settings.heavy_batches if b <= profile.max_batch]
        if engine.run is not None:
            run = engine.run
            result.relative_error_vs_fp32, result.max_level_diff = _tensorrt_accuracy(item, run, settings)

            def call(*inputs: Tensor) -> Tensor:
                return run(inputs)

            for batch in batches:
                try:
                    if clock.left() <= 0:
                        raise BudgetSpent("no time left")
                    sets = rotated_inputs(item.row, batch, settings.rotations, settings.device, seed=batch)
                    ms, repeats, peak = measure(call, sets, settings, clock)
                except BudgetSpent:
                    result.timings.append(Timing(item.row.name, "fp16", "tensorrt", batch, SKIPPED_BUDGET))
                    continue
                result.timings.append(
                    Timing(item.row.name, "fp16", "tensorrt", batch, "ok", ms, ms / batch, repeats, peak)
                )
        elif engine.time_batch is not None:
            result.status += " (trtexec's median GPU compute time; its random inputs give no accuracy number)"
            for batch in batches:
                if clock.left() <= 0:
                    result.timings.append(Timing(item.row.name, "fp16", "tensorrt", batch, SKIPPED_BUDGET))
                    continue
                median = engine.time_batch(batch)
                status = "ok" if median is not None else "error: trtexec failed"
                per_item = None if median is None else median / batch
                result.timings.append(Timing(item.row.name, "fp16", "tensorrt", batch, status, median, per_item))
        return result
    except Exception as error:
        log.warning("TensorRT (%s) failed: %s", detail, error)
        return TensorRTResult(f"TensorRT ({detail}): failed ({_short(error)}); skipped", route)
    finally:
        _free(settings.device)


def _tensorrt_accuracy(
    item: Measured, run: Callable[[Sequence[Tensor]], Tensor], settings: Settings
) -> tuple[float, int | None]:
    """TensorRT fp16 against the fp32 PyTorch generator (TF32 off), on the precision study's batch."""
    assert item.module is not None
    device = settings.device
    inputs = rotated_inputs(item.row, settings.error_batch, 1, device, seed=1234)[0]
    module = item.module.to(device)
    try:
        with precision.exact_fp32(device), torch.no_grad():
            want = module(*inputs).float()
        have = run(inputs).float()
    finally:
        item.module = module.to("cpu")
    if not bool(torch.isfinite(have).all()):
        return math.inf, None
    levels = (torch.round(have.clamp(0, 1) * 255) - torch.round(want.clamp(0, 1) * 255)).abs()
    return relative_error(have, want), int(levels.max())


# ------------------------------------------------------------------------------------------------ estimates


def estimate_sessions(items: list[Measured], timings: list[Timing], dtypes: Iterable[str]) -> dict[str, Any]:
    """Live sessions at 25 fps per engine and dtype, from the best measured time per item of each stage."""
    rows = {item.row.name: item.row for item in items}
    stages_built = {item.row.stage for item in items if item.module is not None}
    engines: dict[str, Any] = {}
    for engine, stages in ENGINES.items():
        missing_stage = next((s for s in stages if s not in stages_built and s in OPTIONAL_STAGES), None)
        if missing_stage is not None:
            engines[engine] = {"status": f"{missing_stage}: not built"}
            continue
        per_dtype: dict[str, Any] = {}
        for dtype in dtypes:
            parts: dict[str, Any] = {}
            missing = []
            for stage in stages:
                best = min(
                    (
                        t
                        for t in timings
                        if t.status == "ok"
                        and t.dtype == dtype
                        and t.batch <= SERVING_MAX_BATCH
                        and t.ms_per_item is not None
                        and rows[t.row].stage == stage
                    ),
                    key=lambda t: t.ms_per_item or math.inf,
                    default=None,
                )
                if best is None or best.ms_per_item is None:
                    missing.append(stage)
                    continue
                frames = FRAMES_PER_ITEM.get(stage, 1.0)
                parts[stage] = {
                    "row": best.row,
                    "runtime": best.runtime,
                    "batch": best.batch,
                    "ms_per_frame": best.ms_per_item / frames,
                }
            if missing:
                per_dtype[dtype] = {"status": f"not measured: {', '.join(missing)}"}
                continue
            ms_per_frame = sum(p["ms_per_frame"] for p in parts.values())
            per_dtype[dtype] = {
                "ms_per_frame": ms_per_frame,
                "sessions": math.floor(1e3 / (FPS * ms_per_frame)),
                "parts": parts,
            }
        engines[engine] = per_dtype
    return {
        "label": ESTIMATE_LABEL,
        "method": (
            f"sessions = floor(1000 ms / ({FPS} fps × Σ ms per frame)), each stage at its fastest measured runtime "
            f"and batch ≤ {SERVING_MAX_BATCH} (the largest batch Triton forms by default) in that dtype; mel's "
            f"time per item is spread over the {FRAMES_PER_ITEM['mel']:.1f} frames of audio it covers. Assumes the "
            "GPU does nothing else and batches stay full; leaves out host↔device copies, Triton, the gateway "
            "(decode, paste-back, encode on the CPU), once-per-avatar stages (face_recon, kp_detector) and "
            "audio2pose (pose=audio mode)"
        ),
        "engines": engines,
    }


# --------------------------------------------------------------------------------------------------- report


def describe_weights(settings: Settings) -> str:
    if settings.reduced:
        return "RANDOM (reduced architecture, export.stages seeds) - not a result of the models"
    if settings.checkpoints is not None:
        return str(Variant(settings.checkpoints).describe()["weights"])
    return "SYNTHETIC official-layout weights made in memory (export.synthetic, seed 0) - not the official weights"


def environment(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if settings.device.type == "cuda":
        props = torch.cuda.get_device_properties(settings.device)
        info.update(
            device=torch.cuda.get_device_name(settings.device),
            capability=".".join(map(str, torch.cuda.get_device_capability(settings.device))),
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32="off (fp32 means fp32)",
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()})")
    return info


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: they become null (an error's `finite` flag says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _number(value: float | None) -> str:
    """Three significant digits, without exponents."""
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def _cell_ms(timing: Timing | None) -> str:
    if timing is None:
        return "—"
    if timing.status == "ok" and timing.ms_per_item is not None:
        return _number(timing.ms_per_item)
    if timing.status == "oom":
        return "OOM"
    return "skip" if timing.status.startswith("skipped") else "err"


def _error_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if str(entry.get("status", "")).startswith("skipped"):
        return "skip"
    if not entry.get("finite", True):
        return "non-finite"
    value = entry.get("relative_error")
    return "err" if value is None else f"{value:.1e}"


def render_markdown(report: dict[str, Any], items: list[Measured], timings: list[Timing], settings: Settings) -> str:
    env = report["environment"]
    cuda = settings.device.type == "cuda"
    size = f"{'reduced architecture' if settings.reduced else 'full size'}, weights: {report['settings']['weights']}"
    lines = [
        f"# GPU readiness benchmark — {env['device']}",
        "",
        f"{report['started']}, {report['elapsed_s']:.0f} s; torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if settings.device.type == "cuda" else "")
        + f"; {size}; {'--quick' if settings.quick else 'full run'}; `{' '.join(report['argv'])}`.",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    # Precision per stage.
    labels = [p.label for p in precision.reduced_precisions(settings.error_dtypes)]
    if any(item.errors for item in items):
        lines += [
            "",
            f"## Reduced-precision error per stage (relative L2 vs fp32, same inputs, batch {settings.error_batch})",
            "",
            "| stage | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels),
        ]
        for item in items:
            if item.errors:
                lines.append(
                    f"| {item.row.name} | " + " | ".join(_error_cell(item.errors.get(x)) for x in labels) + " |"
                )
    if report["render_path"]:
        lines += [
            "",
            f"## Render path: mapping → generator → uint8 face (batch {settings.error_batch}), vs fp32",
            "",
            "| sampler | dtype | mode | coordinates | rel. error | max level diff | mean level diff | > 2 levels |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for r in report["render_path"]:
            if r["status"] != "ok":  # skipped (time budget) or failed: say which, in place of the numbers
                case = f"| {r['form']} | {r['dtype']} | {r['mode']} | {r['coordinates']} |"
                lines.append(f"{case} {r['status'][:80]} | — | — | — |")
                continue
            rel = f"{r['relative_error']:.1e}" if r["finite"] else "non-finite"
            lines.append(
                f"| {r['form']} | {r['dtype']} | {r['mode']} | {r['coordinates']} | {rel} | {r['max_level_diff']} | "
                f"{r['mean_level_diff']:.2f} | {100 * r['share_over_2_levels']:.1f} % |"
            )
    # Estimates.
    estimates = report["estimates"]
    dtypes = list(settings.dtypes)
    lines += [
        "",
        f"## Live sessions per {'GPU' if cuda else 'machine'} at {FPS} fps — {estimates['label']}",
        "",
        "| engine | " + " | ".join(f"{d}: sessions (ms/frame)" for d in dtypes) + " |",
        "|---|" + "---:|" * len(dtypes),
    ]
    for engine, per_dtype in estimates["engines"].items():
        if "status" in per_dtype:
            lines.append(f"| {engine} | " + " | ".join(per_dtype["status"] for _ in dtypes) + " |")
            continue
        cells = []
        for d in dtypes:
            e = per_dtype.get(d, {})
            cells.append(f"{e['sessions']} ({e['ms_per_frame']:.3g})" if "sessions" in e else e.get("status", "—"))
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    if settings.reduced:
        lines.append("\nReduced architecture: these numbers exercise the method, they say nothing about the models.")
    lines += ["", f"Method: {estimates['method']}.", "", report["tensorrt"]["status"]]
    trt = report["tensorrt"]
    if trt.get("relative_error_vs_fp32") is not None:
        lines.append(
            f"TensorRT fp16 vs PyTorch fp32 (batch {settings.error_batch}): relative error "
            f"{trt['relative_error_vs_fp32']:.1e}, max level diff {trt['max_level_diff']}."
        )
    # Peak memory.
    all_batches = sorted({b for item in items for b in settings.batches_for(item.row)})
    index = {(t.row, t.dtype, t.runtime, t.batch): t for t in timings}
    if settings.device.type == "cuda":
        lines += [
            "",
            "## Peak GPU memory (MiB, eager; weights, inputs and activations)",
            "",
            "| stage | dtype | " + " | ".join(f"@{b}" for b in all_batches) + " |",
            "|---|---|" + "---:|" * len(all_batches),
        ]
        for item in items:
            for dtype in settings.dtypes:
                cells = []
                for b in all_batches:
                    t = index.get((item.row.name, dtype, "eager", b))
                    cells.append(f"{t.peak_mib:.0f}" if t is not None and t.peak_mib is not None else _cell_ms(t))
                lines.append(f"| {item.row.name} | {dtype} | " + " | ".join(cells) + " |")
    # Time per item: the main table, last.
    lines += [
        "",
        f"## Time per item (ms, median of repeats; {'CUDA events' if cuda else 'wall clock'})",
        "",
        "| stage | GFLOP/item | dtype | runtime | " + " | ".join(f"@{b}" for b in all_batches) + " |",
        "|---|---:|---|---|" + "---:|" * len(all_batches),
    ]
    for item in items:
        gflop = _number(item.gflop_per_item)
        combos: list[tuple[str, str]] = sorted(
            {(runtime, dtype) for (row, dtype, runtime, _) in index if row == item.row.name},
            key=lambda c: (("eager", "compile", "tensorrt").index(c[0]), ("fp32", "fp16", "bf16").index(c[1])),
        )
        if not combos:
            why = item.status if item.module is None else "not timed"
            lines.append(f"| {item.row.name} | {gflop} | — | {why} | " + " | ".join("—" for _ in all_batches) + " |")
        for runtime, dtype_name in combos:
            cells = [_cell_ms(index.get((item.row.name, dtype_name, runtime, b))) for b in all_batches]
            lines.append(f"| {item.row.name} | {gflop} | {dtype_name} | {runtime} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ run


def run(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    clock = Clock(settings.budget_s)
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    device = settings.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # fp32 means fp32 here: TF32 would make the fp32 column (and the error references) another precision.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    items, notes = build_rows(settings)
    if device.type == "cuda" and not _bf16_native():
        notes.append("bf16: left out (this GPU has no native bf16)")
    if device.type == "cpu":
        notes.append("fp16 is not timed on the CPU (reference kernels only); the precision study emulates it")
    notes.append(f"reduced-precision emulation: {precision.describe_emulation(device)}")
    gflop: dict[str, float] = {}
    for item in items:
        if item.module is None:
            continue
        item.params_m = sum(p.numel() for p in item.module.parameters()) / 1e6
        if item.row.stage not in gflop:  # the sampler forms differ in no counted operation
            gflop[item.row.stage] = flops_per_item(item, device) / 1e9
        item.gflop_per_item = gflop[item.row.stage] if math.isfinite(gflop[item.row.stage]) else None

    # Phases in order, each keeping time for those after it: eager timing, the precision study, torch.compile,
    # TensorRT. Each stops starting work when its share is spent; a call already running is not cut short.
    timings: list[Timing] = []
    ready = [item for item in items if item.module is not None]
    compile_on = settings.compile and "compile" in settings.parts
    # Time is kept for a TensorRT build only where one can happen.
    trt_on = "tensorrt" in settings.parts and device.type == "cuda" and tensorrt.detect()[0] is not None
    trt_reserve = (150.0 if not settings.quick else 90.0) if trt_on else 0.0
    compile_reserve = (0.25 * settings.budget_s if compile_on else 0.0) + trt_reserve
    # At most half of a small budget (--budget) is kept for the study, so that the timings get the other half.
    precision_reserve = min(settings.precision_reserve_s, 0.5 * settings.budget_s)
    if "precision" not in settings.parts:
        precision_reserve = 0.0
    setup_s = clock.elapsed()  # before the phases that the budget stops: building the rows, counting FLOPs
    log.info("built %d rows and counted their FLOPs (%.0f s)", len(ready), setup_s)
    if "timing" in settings.parts:
        total = sum(len(settings.batches_for(i.row)) for i in ready) * len(settings.dtypes)
        log.info("eager: %d configurations", total)
        with progress(total, "eager") as tick:
            for item in ready:
                for dtype in settings.dtypes:
                    reserve = precision_reserve + compile_reserve
                    timings += time_row(item, dtype, "eager", settings, clock, reserve, tick)
    render_path: list[dict[str, Any]] = []
    if "precision" in settings.parts:
        log.info("precision study (%.0f s so far)", clock.elapsed())
        render_path = precision_study(items, settings, clock, compile_reserve)
    if compile_on:
        jobs = compile_jobs(ready, settings)
        log.info("torch.compile: %d row × dtype jobs (%.0f s so far)", len(jobs), clock.elapsed())
        # A compile cannot be cut short: start one only if the longest so far (at first a guess) still fits.
        longest = {True: 90.0, False: 30.0}  # heavy rows, the others
        with progress(sum(len(settings.batches_for(i.row)) for i, _ in jobs), "compile") as tick:
            for item, dtype in jobs:
                if clock.left(trt_reserve) < longest[item.row.heavy]:
                    why = "skipped: time budget (a compile would not fit)"
                    timings += [Timing(item.row.name, dtype, "compile", b, why) for b in settings.batches_for(item.row)]
                    continue
                began = time.monotonic()
                timings += time_row(item, dtype, "compile", settings, clock, trt_reserve, tick)
                longest[item.row.heavy] = max(longest[item.row.heavy], time.monotonic() - began)
    elif settings.device.type == "cpu":
        notes.append("torch.compile: not run on the CPU (--compile on to force)")
    if "tensorrt" not in settings.parts:
        trt = TensorRTResult("TensorRT: not run (not in --parts)")
    else:
        trt = tensorrt_phase(items, settings, clock)
    timings += trt.timings
    log.info(trt.status)
    if budget_note := describe_budget(items, timings, render_path, settings):
        notes.append(budget_note)
        log.warning(budget_note)

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started": started,
        "elapsed_s": clock.elapsed(),
        "setup_s": setup_s,
        "argv": ["python", "bench/gpu.py", *argv],
        "environment": environment(settings),
        "settings": {
            "device": device.type,
            "quick": settings.quick,
            "size": "reduced" if settings.reduced else "full",
            "weights": describe_weights(settings),
            "dtypes": list(settings.dtypes),
            "error_dtypes": list(settings.error_dtypes),
            "error_batch": settings.error_batch,
            "render_modes": list(settings.render_modes),
            "batches": list(settings.batches),
            "heavy_batches": list(settings.heavy_batches),
            "warmup": settings.warmup,
            "repeats": f"{settings.min_repeats}..{settings.max_repeats}, about {settings.target_s} s per configuration",
            "rotations": settings.rotations,
            "budget_s": settings.budget_s,
            "timing": "eager and compile run under torch.autocast for fp16/bf16 (fp32: plain), inside torch.no_grad",
            "parts": sorted(settings.parts),
        },
        "notes": notes,
        "stages": {
            item.row.name: {
                "stage": item.row.stage,
                "form": item.row.form,
                "status": item.status,
                "doc": STAGES[item.row.stage].doc,
                "params_m": item.params_m,
                "gflop_per_item": item.gflop_per_item,
                "frames_per_item": FRAMES_PER_ITEM.get(item.row.stage, 1.0),
                "batches": list(settings.batches_for(item.row)),
                "errors": item.errors,
                "timings": [asdict(t) for t in timings if t.row == item.row.name],
            }
            for item in items
        },
        "render_path": render_path,
        "estimates": estimate_sessions(items, timings, settings.dtypes),
        "tensorrt": {k: v for k, v in asdict(trt).items() if k != "timings"},
    }
    report["elapsed_s"] = clock.elapsed()
    settings.out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report, items, timings, settings)
    (settings.out / "gpu-bench.md").write_text(markdown)
    (settings.out / "gpu-bench.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    log.info("wrote %s and %s", settings.out / "gpu-bench.md", settings.out / "gpu-bench.json")
    report["markdown"] = markdown
    return report


def describe_budget(
    items: list[Measured], timings: list[Timing], render_path: list[dict[str, Any]], settings: Settings
) -> str | None:
    """One line on what the time budget left out or cut short; None when it did neither."""
    skipped_timings = sum(t.status == SKIPPED_BUDGET for t in timings)
    skipped_errors = sum(e.get("status") == SKIPPED_BUDGET for i in items for e in i.errors.values())
    skipped_render = sum(r.get("status") == SKIPPED_BUDGET for r in render_path)
    # trtexec's timings carry no repeat count (0): only those measured here can have been cut short.
    short = sum(t.status == "ok" and 0 < t.repeats < settings.min_repeats for t in timings)
    if not (skipped_timings or skipped_errors or skipped_render or short):
        return None
    parts = [
        f"{count} {what}"
        for count, what in (
            (skipped_timings, "timings"),
            (skipped_errors, "stage errors"),
            (skipped_render, "render-path cases"),
        )
        if count
    ]
    text = f"time budget ({settings.budget_s:.0f} s) spent: "
    text += f"skipped {', '.join(parts)} (marked skip)" if parts else "nothing skipped"
    if short:
        text += f"; {short} timings took fewer than {settings.min_repeats} repeats"
    return text


def compile_jobs(items: list[Measured], settings: Settings) -> list[tuple[Measured, DTypeName]]:
    """(row, dtype) pairs to compile, the heavy renderers first, reduced precisions before fp32."""
    chosen = [i for i in items if settings.compile_rows is None or i.row.name in settings.compile_rows]
    ordered = sorted(chosen, key=lambda i: (not i.row.heavy, i.row.name != "generator_4d"))
    return [(i, d) for d in settings.compile_dtypes if d in settings.dtypes for i in ordered]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)  # -v: every measurement as it is taken
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(args)
    log.info(
        "device %s, %s, budget %.0f s", settings.device, "quick" if settings.quick else "full run", settings.budget_s
    )
    report = run(settings, argv)
    sys.stdout.write(report["markdown"])
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
