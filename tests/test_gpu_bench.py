"""bench/gpu.py: its CPU mode end to end (a subprocess, as CI runs it), what it needs, and its pieces.

The CUDA path cannot run here; its parts that need no GPU (trtexec's command lines and output, the session
estimate, TensorRT detection failing soft) are tested on their own.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from export import precision, tensorrt
from export.engines import STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "bench" / "gpu.py"


def load_bench() -> ModuleType:
    """bench/ is a folder of scripts, not a package: load gpu.py by path."""
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu = load_bench()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("gpu_bench")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads((out / "gpu-bench.json").read_text()) if (out / "gpu-bench.json").is_file() else {}
    return done, report, out


@pytest.mark.slow
def test_cpu_quick_prints_the_table_last_and_exits_0(
    cpu_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    done, report, out = cpu_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[-1].startswith("## Time per item")
    last_stage = lines[-1].split("|")[1].strip()  # a table row, last: the time of the last stage measured
    assert last_stage in {"generator", "gfpgan", "wav2lip"}, lines[-1]
    assert (out / "gpu-bench.md").read_text() == done.stdout
    # The budget (90 s) holds on any CPU: bf16 is timed only where the CPU has it and emulated in the study
    # elsewhere, and every phase stops when its share is spent; what is left over is one call per phase.
    assert report["settings"]["budget_s"] == 90
    assert report["elapsed_s"] < report["settings"]["budget_s"] + 30  # < 2 minutes


@pytest.mark.slow
def test_cpu_quick_json_structure(cpu_run: tuple[subprocess.CompletedProcess[str], dict, Path]) -> None:
    _, report, _ = cpu_run
    assert report["schema"] == "lipsync-triton/gpu-bench/1"
    assert report["settings"]["device"] == "cpu" and report["settings"]["size"] == "reduced"
    # bf16 is timed only where the CPU has bf16 arithmetic; its error is studied everywhere (emulated elsewhere).
    timed_dtypes = ["fp32", "bf16"] if precision.cpu_has_native_bf16() else ["fp32"]
    assert report["settings"]["dtypes"] == timed_dtypes
    expected = {"mel", "audio2exp", "audio2pose", "mapping", "kp_detector", "face_recon", "gfpgan"}
    assert expected | {"generator_5d", "generator_4d"} <= set(report["stages"])
    for name, stage in report["stages"].items():
        assert stage["batches"] == [1, 2], name
        assert stage["gflop_per_item"] > 0, name
        assert set(stage["errors"]) == {"bf16/autocast", "bf16/cast"}, name
        assert all(0 < e["relative_error"] < 0.2 and e["finite"] for e in stage["errors"].values()), name
        timed = {(t["dtype"], t["batch"]) for t in stage["timings"] if t["runtime"] == "eager"}
        assert timed == {(d, b) for d in timed_dtypes for b in (1, 2)}, name
        for t in stage["timings"]:
            assert t["status"] == "ok" or t["status"].startswith("skipped"), (name, t)
            if t["status"] == "ok":  # fewer than 3 repeats only where the budget ran short, and then said so
                assert t["ms_per_item"] > 0 and t["repeats"] >= 1 and t["peak_mib"] is None
                assert t["repeats"] >= 3 or any("fewer than 3 repeats" in n for n in report["notes"])
    assert {(r["form"], r["coordinates"]) for r in report["render_path"]} == {
        (form, coords) for form in ("5d", "4d") for coords in ("fp32", "native")
    }
    estimates = report["estimates"]
    assert estimates["label"].startswith("ESTIMATE")
    assert set(estimates["engines"]) == {"SadTalker", "SadTalker + GFPGAN", "Wav2Lip", "Wav2Lip + GFPGAN"}
    if "wav2lip" not in report["stages"]:
        assert estimates["engines"]["Wav2Lip"] == {"status": "wav2lip: not built"}
    assert report["tensorrt"]["status"] == "TensorRT: not run (needs a CUDA device)"


@pytest.mark.slow
def test_a_tiny_budget_holds_inside_the_phases_and_says_what_it_skipped(tmp_path: Path) -> None:
    """The full CPU run (its precision study alone takes several budgets) under --budget 8: it stops starting
    timings, stage errors and render-path cases once the budget is spent, and the report names what it skipped."""
    budget = 8
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--budget", str(budget), "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-bench.json").read_text())
    # Building the rows and counting their FLOPs (setup_s: one call of every row) comes before anything the
    # budget can stop; past the budget at most one call per phase is still running, each smaller than that
    # setup, so the bound scales with the machine's speed and load instead of assuming a CPU.
    setup = report["setup_s"]
    assert report["elapsed_s"] < max(budget, setup) + setup + 5, (report["elapsed_s"], setup)
    timings = [t for stage in report["stages"].values() for t in stage["timings"]]
    errors = [e for stage in report["stages"].values() for e in stage["errors"].values()]
    assert all(t["status"] in {"ok", "skipped: time budget"} for t in timings), timings
    skipped = {
        "timings": sum(t["status"] == "skipped: time budget" for t in timings),
        "stage errors": sum(e.get("status") == "skipped: time budget" for e in errors),
        "render-path cases": sum(r["status"] == "skipped: time budget" for r in report["render_path"]),
    }
    assert skipped["timings"] > 0 and skipped["stage errors"] + skipped["render-path cases"] > 0, skipped
    # Every case asked for is in the report, measured or marked skipped: nothing dropped.
    assert len(errors) == len(report["stages"]) * 4  # fp16 and bf16, autocast and cast
    assert len(report["render_path"]) == 2 * 4 * 2  # 2 sampler forms × 4 precisions × 2 coordinate dtypes
    note = next(n for n in report["notes"] if n.startswith(f"time budget ({budget} s) spent: skipped"))
    for what, count in skipped.items():
        assert f" {count} {what}" in note if count else what not in note, note
    assert note in done.stdout and "skipped: time budget" in done.stdout


def test_measure_and_the_study_take_what_time_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pieces under the tiny-budget run: repeats cut to the time left (below the minimum, down to 1), no
    repeat at all when not one fits, and the precision study stopping between precisions."""
    settings = gpu.make_settings(gpu.parse_args(["--device", "cpu", "--quick"]))

    class Left:  # a clock that always has the same time left
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def left(self, reserve_s: float = 0.0) -> float:
            return self.seconds

    calls: list[int] = []
    sets = [(torch.zeros(1),), (torch.ones(1),)]
    # Every call "takes" 100 ms, whatever this machine's speed.
    monkeypatch.setattr(gpu._Timer, "milliseconds", lambda self: [100.0] * len(self._wall))
    _, repeats, _ = gpu.measure(lambda x: calls.append(1), sets, settings, Left(3600))
    assert repeats == settings.min_repeats  # 3 × 100 ms covers the 0.3 s target: the budget does not matter
    _, repeats, _ = gpu.measure(lambda x: calls.append(1), sets, settings, Left(0.25))
    assert repeats == 2  # 0.25 s left: two 100 ms calls fit, not the usual 3
    calls.clear()
    with pytest.raises(gpu.BudgetSpent):
        gpu.measure(lambda x: calls.append(1), sets, settings, Left(0.05))
    assert len(calls) == settings.warmup  # the warm-up (which tells the cost), then nothing
    answers = iter([False, True])
    errors = precision.stage_errors(
        torch.nn.Linear(4, 4),
        (torch.randn(2, 4),),
        precision.reduced_precisions(("fp16", "bf16")),
        torch.device("cpu"),
        stop=lambda: next(answers),
    )
    assert list(errors) == ["fp16/autocast"]


def test_help_says_what_it_needs() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "Needs only PyTorch, numpy and this repository" in done.stdout
    assert "--quick" in done.stdout and "--device" in done.stdout and "--out" in done.stdout


def test_runs_with_nothing_but_torch_and_numpy(tmp_path: Path) -> None:
    """Every optional package is made unimportable; a small CPU run still completes."""
    blocked = ["onnx", "onnxruntime", "onnxscript", "safetensors", "scipy", "tqdm", "tritonclient", "tensorrt"]
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"blocked: {{name}}")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["bench/gpu.py", "--device", "cpu", "--quick", "--stages", "mapping", "--out", {str(tmp_path)!r}]
import runpy
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert set(report["stages"]) == {"mapping"}


def test_tensorrt_missing_is_one_line() -> None:
    route, why = tensorrt.detect()
    if route is not None:
        pytest.skip(f"this machine has a TensorRT route: {why}")
    assert "no tensorrt package" in why and "no trtexec" in why
    settings = gpu.make_settings(gpu.parse_args(["--device", "cpu", "--quick"]))
    result = gpu.tensorrt_phase([], settings, gpu.Clock(60))
    assert result.status == "TensorRT: not run (needs a CUDA device)" and "\n" not in result.status


def test_trtexec_commands_and_output() -> None:
    profile = tensorrt.Profile(STAGES["generator"], max_batch=16)
    build = tensorrt.trtexec_build_command("trtexec", Path("g.onnx"), Path("g.engine"), profile, 3)
    assert build[:3] == ["trtexec", "--onnx=g.onnx", "--fp16"]
    assert "--minShapes=source_image:1x3x256x256,kp_source:1x15x3,kp_driving:1x15x3" in build
    assert "--optShapes=source_image:8x3x256x256,kp_source:8x15x3,kp_driving:8x15x3" in build
    assert "--maxShapes=source_image:16x3x256x256,kp_source:16x15x3,kp_driving:16x15x3" in build
    timing = tensorrt.trtexec_time_command("trtexec", Path("g.engine"), profile, 4)
    assert "--shapes=source_image:4x3x256x256,kp_source:4x15x3,kp_driving:4x15x3" in timing
    assert profile.output_shape(4) == (4, 3, 256, 256)
    output = (
        "[12/01/2026-10:00:00] [I] Latency: min = 3.1 ms, max = 3.9 ms, mean = 3.3 ms, median = 3.25 ms\n"
        "[12/01/2026-10:00:00] [I] GPU Compute Time: min = 2.9 ms, max = 3.6 ms, mean = 3.05 ms, median = 3.02 ms, "
        "percentile(90%) = 3.2 ms\n"
    )
    assert tensorrt.parse_trtexec_median_ms(output) == 3.02
    assert tensorrt.parse_trtexec_median_ms("no timing here") is None
    with pytest.raises(ValueError, match="dynamic axis"):
        tensorrt.Profile(STAGES["mel"], max_batch=4).argument(1)


def test_session_estimate_arithmetic() -> None:
    rows = [gpu.Row(name, name) for name in ("mel", "audio2exp", "mapping", "gfpgan")]
    rows += [gpu.Row("generator_5d", "generator", "5d"), gpu.Row("generator_4d", "generator", "4d")]
    items = [gpu.Measured(row, module=torch.nn.Identity()) for row in rows]
    T = gpu.Timing
    timings = [
        T("mel", "fp16", "eager", 8, "ok", 7.2, 0.9),  # 0.9 ms per 4600 samples: 20 mel frames, 6.25 video frames
        T("audio2exp", "fp16", "eager", 8, "ok", 0.8, 0.1),
        T("mapping", "fp16", "eager", 8, "ok", 0.8, 0.1),
        T("generator_5d", "fp16", "eager", 8, "ok", 48.0, 6.0),
        T("generator_4d", "fp16", "compile", 16, "ok", 48.0, 3.0),
        T("generator_4d", "fp16", "eager", 64, "ok", 64.0, 1.0),  # above the serving batch: not used
        T("gfpgan", "fp16", "eager", 4, "oom"),
    ]
    estimate = gpu.estimate_sessions(items, timings, ["fp16", "bf16"])
    sadtalker = estimate["engines"]["SadTalker"]["fp16"]
    assert sadtalker["parts"]["generator"] == {
        "row": "generator_4d",
        "runtime": "compile",
        "batch": 16,
        "ms_per_frame": 3.0,
    }
    assert sadtalker["ms_per_frame"] == pytest.approx(0.9 / gpu.FRAMES_PER_ITEM["mel"] + 0.1 + 0.1 + 3.0)
    assert sadtalker["sessions"] == 11  # 1000 / (25 × 3.344) = 11.96
    assert estimate["engines"]["SadTalker + GFPGAN"]["fp16"] == {"status": "not measured: gfpgan"}
    assert estimate["engines"]["SadTalker"]["bf16"]["status"].startswith("not measured")
    assert estimate["engines"]["Wav2Lip"] == {"status": "wav2lip: not built"}
    assert estimate["label"].startswith("ESTIMATE")


def test_cuda_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU run measures (the settings only: there is no GPU here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "_bf16_native", lambda: True)
    full = gpu.make_settings(gpu.parse_args([]))
    assert full.device.type == "cuda" and not full.reduced and full.compile
    assert full.batches == (1, 4, 8, 16, 32) and full.heavy_batches == (1, 4, 8, 16, 32, 64)
    assert full.dtypes == ("fp32", "fp16", "bf16") and full.error_dtypes == ("fp16", "bf16")
    for stage in ("generator", "gfpgan", "wav2lip"):
        assert full.batches_for(gpu.Row(stage, stage)) == full.heavy_batches
    assert full.batches_for(gpu.Row("mapping", "mapping")) == full.batches
    assert full.budget_s <= 450  # < 8 minutes with the report
    quick = gpu.make_settings(gpu.parse_args(["--quick"]))
    assert quick.budget_s <= 160 and quick.compile_rows is not None
    monkeypatch.setattr(gpu, "_bf16_native", lambda: False)
    assert gpu.make_settings(gpu.parse_args([])).dtypes == ("fp32", "fp16")
