"""Throughput and latency of the served models with Triton's perf_analyzer: ``python bench/perf.py [options]``.

Embedded (default): writes a cpu repository from exported graphs (``--onnx DIR``, or ``--reduced`` to export the
reduced architecture first), starts the embedded Triton on loopback ports, measures, stops it.
A GPU deployment (docker-compose.yml): ``python bench/perf.py --url HOST:8001`` measures the server at that gRPC
address instead, with the same input data.

For each model or ensemble, the input data (JSON, base64 tensors) is generated from the specs: floats drawn as
the specs say, and valid indices (style ids in range, mel-window indices computed from the signal sent).
perf_analyzer runs over a concurrency range in count-window mode; the results go to a CSV and a Markdown table
(docs/perf.csv, docs/perf.md) that say how they were measured.

perf_analyzer ships in the ``tritonclient==2.51.0`` wheel (``.venv/bin/perf_analyzer``); it needs Debian's
``libb64-0d`` and the CUDA runtime library from PyPI's ``nvidia-cuda-runtime-cu12`` (found and put on
``LD_LIBRARY_PATH`` here), even against a CPU-only server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import datetime
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_class

from export.engines import ENSEMBLES, STAGES
from export.repository import RepositorySettings, triton_batched, write_repository
from export.specs import EnsembleSpec, StageSpec, TensorIO
from lipsync.audio import SAMPLES_PER_VIDEO_FRAME, mel_window_indices, num_mel_frames

log = logging.getLogger("bench.perf")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("audio2exp", "mapping", "motion", "avatar", "render")
# Models whose requests carry one item (an avatar, a pose window) rather than a chunk of frames.
SINGLE_ITEM = {"avatar", "face_recon", "kp_detector", "audio2pose", "mel"}


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot start, or failed to measure."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]

    def version(self) -> str:
        result = subprocess.run(
            [str(self.binary), "--version"], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            hint = "apt-get install libb64-0d" if "libb64" in result.stderr else "pip install nvidia-cuda-runtime-cu12"
            raise PerfAnalyzerError(f"{self.binary} cannot start ({result.stderr.strip()}); {hint}")
        return (result.stdout or result.stderr).strip()  # it prints its version on stderr


def find_perf_analyzer() -> PerfAnalyzer:
    """perf_analyzer of the tritonclient wheel, with the CUDA runtime library of nvidia-cuda-runtime-cu12."""
    candidates = [Path(sys.executable).parent / "perf_analyzer", Path(shutil.which("perf_analyzer") or "")]
    binary = next((path for path in candidates if path.is_file()), None)
    if binary is None:
        raise PerfAnalyzerError(
            "perf_analyzer not found: pip install 'tritonclient[all]==2.51.0' (it ships the binary)"
        )
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise PerfAnalyzerError("perf_analyzer links libcudart.so.12: pip install nvidia-cuda-runtime-cu12")
    cuda_lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cuda_lib), env.get("LD_LIBRARY_PATH")]))
    return PerfAnalyzer(binary, env)


# ------------------------------------------------------------------------------------------- input data


def _draw(tensor: TensorIO, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values as the spec's ``sample`` rule says (the same rules as export.onnx.sample_inputs, in numpy)."""
    if tensor.sample.startswith("int:"):
        return rng.integers(0, int(tensor.sample[4:]), shape).astype(tensor.dtype)
    if tensor.sample == "unit":
        return rng.random(shape, dtype=np.float32)
    if tensor.sample == "signed":
        return rng.random(shape, dtype=np.float32) * 2 - 1
    scale = 0.3 if tensor.sample == "keypoints" else 1.0
    return (scale * rng.standard_normal(shape)).astype(tensor.dtype)


def _interface(model: str) -> tuple[tuple[TensorIO, ...], bool]:
    spec: StageSpec | EnsembleSpec = ENSEMBLES[model] if model in ENSEMBLES else STAGES[model]
    return spec.inputs, triton_batched((*spec.inputs, *spec.outputs))


def request_arrays(model: str, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One request's inputs, with the batch axis: ``frames`` rows (one for single-item models)."""
    inputs, batched = _interface(model)
    rng = np.random.default_rng(seed)
    rows = 1 if model in SINGLE_ITEM else frames
    # The signal of `rows` video frames, as the gateway sends it (centre-padded), and its mel frame count.
    samples = rows * SAMPLES_PER_VIDEO_FRAME
    mel_frames = num_mel_frames(samples)
    sizes = {"batch": rows, "frames": rows, "samples": samples + 800, "mel_frames": mel_frames}
    arrays = {}
    for tensor in inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in tensor.shape)
        if tensor.name in ("mel_index", "index"):  # indices must point into the mel of the signal sent
            arrays[tensor.name] = mel_window_indices(rows, mel_frames)
        else:
            arrays[tensor.name] = _draw(tensor, shape, rng)
    if not batched:
        return arrays
    return {name: (a[:, None] if a.ndim == 1 else a) for name, a in arrays.items()}  # (B,) → (B, 1) as configured


def input_data(model: str, frames: int, seed: int = 0) -> tuple[dict[str, Any], int]:
    """perf_analyzer's --input-data JSON for one request, and the batch size (-b) to send it with.

    Batched models get one batch row (perf_analyzer repeats it -b times); the others the whole request.
    """
    arrays = request_arrays(model, frames, seed)
    _, batched = _interface(model)
    rows = next(iter(arrays.values())).shape[0] if batched else 1
    entry = {}
    for name, array in arrays.items():
        one = np.ascontiguousarray(array[:1][0] if batched else array)
        entry[name] = {"content": {"b64": base64.b64encode(one.tobytes()).decode()}, "shape": list(one.shape)}
    return {"data": [entry]}, rows


# ------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Measurement:
    model: str
    batch: int  # rows per request (-b); for unbatched models 1
    frames_per_request: int
    concurrency: int
    requests_per_s: float
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    server_queue_ms: float
    server_compute_ms: float


def measure(
    perf: PerfAnalyzer,
    url: str,
    model: str,
    *,
    frames: int,
    concurrency: str,
    work_dir: Path,
    request_count: int = 20,
    max_trials: int = 5,
    stability: int = 20,
) -> list[Measurement]:
    """Run perf_analyzer on one model over ``concurrency`` ("start:end:step") and parse its CSV."""
    data, batch = input_data(model, frames)
    data_file = work_dir / f"{model}.input.json"
    data_file.write_text(json.dumps(data))
    csv_file = work_dir / f"{model}.perf.csv"
    command = [
        str(perf.binary),
        *("-m", model, "-u", url, "-i", "grpc", "--input-data", str(data_file)),
        *("--concurrency-range", concurrency, "-f", str(csv_file)),
        *("--measurement-mode", "count_windows", "--measurement-request-count", str(request_count)),
        *("--max-trials", str(max_trials), "-s", str(stability)),
    ]
    if _interface(model)[1]:
        command += ["-b", str(batch)]
    log.info("measuring %s: %s", model, " ".join(command))
    result = subprocess.run(command, env=perf.env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not csv_file.is_file():
        raise PerfAnalyzerError(f"perf_analyzer failed on {model}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    frames_per_request = batch if _interface(model)[1] else (1 if model in SINGLE_ITEM else frames)
    rows = []
    with csv_file.open() as handle:
        for row in csv.DictReader(handle):
            per_s = float(row["Inferences/Second"])  # batch rows per second (requests × -b)
            requests = per_s / batch
            rows.append(
                Measurement(
                    model=model,
                    batch=batch,
                    frames_per_request=frames_per_request,
                    concurrency=int(row["Concurrency"]),
                    requests_per_s=round(requests, 3),
                    frames_per_s=round(requests * frames_per_request, 3),
                    p50_ms=float(row["p50 latency"]) / 1000,
                    p99_ms=float(row["p99 latency"]) / 1000,
                    server_queue_ms=float(row["Server Queue"]) / 1000,
                    server_compute_ms=sum(float(row[f"Server Compute {part}"]) for part in ("Input", "Infer", "Output"))
                    / 1000,
                )
            )
    return rows


def concurrency_levels(spec: str) -> list[int]:
    """The concurrencies of perf_analyzer's ``start:end:step`` (``start``, ``start:end``: step 1)."""
    parts = [int(part) for part in spec.split(":")]
    start = parts[0]
    end = parts[1] if len(parts) > 1 else start
    step = parts[2] if len(parts) > 2 else 1
    return list(range(start, end + 1, step))


def write_reports(measurements: Sequence[Measurement], csv_path: Path, markdown_path: Path, how: str) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(measurements[0])))
        writer.writeheader()
        writer.writerows(asdict(m) for m in measurements)
    lines = [
        "| model | frames/request | concurrency | requests/s | frames/s | p50 ms | p99 ms | queue ms | compute ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.model} | {m.frames_per_request} | {m.concurrency} | {m.requests_per_s:.2f} | {m.frames_per_s:.1f} "
            f"| {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.server_queue_ms:.1f} | {m.server_compute_ms:.1f} |"
        )
    markdown_path.write_text("# perf_analyzer measurements\n\n" + how + "\n\n" + "\n".join(lines) + "\n" + REPRODUCE)


REPRODUCE = """
## Reproduce

- Embedded CPU server, reduced architecture (random weights; what CI machines can run):
  `python bench/perf.py --reduced` (exports first) or `python bench/perf.py --onnx artifacts/onnx`.
- A GPU deployment (docker-compose.yml publishes Triton's gRPC port on the host's loopback):
  `python bench/perf.py --url localhost:8001 --frames 16 --concurrency 1:8:1 --models motion,render,render_enhanced`.
  The same input data is generated from the specs; perf_analyzer needs only this repository's virtualenv
  (tritonclient 2.51 with its `perf_analyzer`, `nvidia-cuda-runtime-cu12`) and Debian's `libb64-0d`.
- Columns: requests/s and frames/s are throughput (frames = requests × frames per request); p50/p99 are
  client-side latencies of one request; queue and compute are Triton's server-side averages per request.
"""


@contextlib.contextmanager
def embedded_server(onnx_dir: Path, work_dir: Path, models: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A cpu repository written from ``onnx_dir`` and served by the embedded Triton; yields (url, manifest)."""
    from gateway.triton.server import EmbeddedTriton

    repository = write_repository(onnx_dir, work_dir / "repository", RepositorySettings(target="cpu"))
    missing = [m for m in models if m not in (*repository.models, *repository.ensembles)]
    if missing:
        raise PerfAnalyzerError(f"{', '.join(missing)} not in the repository (skipped: {repository.skipped})")
    manifest = json.loads((repository.path / "repository.json").read_text())
    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as server:
        yield server.grpc_url, manifest


def export_reduced(out: Path) -> Path:
    """The reduced architecture's graphs (random weights), exported with the project's export command."""
    command = [sys.executable, "-m", "export", "onnx", "--reduced", "--with-gfpgan", "--out", str(out)]
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/perf.py", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="gRPC host:port of a running Triton (e.g. the docker-compose deployment)")
    where.add_argument("--onnx", type=Path, help="exported graphs: serve them on the embedded Triton")
    where.add_argument("--reduced", action="store_true", help="export the reduced architecture first (random weights)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated models/ensembles")
    parser.add_argument("--frames", type=int, default=8, help="video frames per request (per-frame models)")
    parser.add_argument("--concurrency", default="1:4:1", help="perf_analyzer's start:end:step")
    parser.add_argument("--request-count", type=int, default=20, help="requests per measurement window")
    parser.add_argument("--max-trials", type=int, default=5)
    parser.add_argument("--stability", type=int, default=20, help="allowed variation between windows, percent")
    parser.add_argument("--csv", type=Path, default=REPO_ROOT / "docs" / "perf.csv")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "docs" / "perf.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    load_before = os.getloadavg()[0]  # other work on the machine skews the numbers: say how busy it was
    perf = find_perf_analyzer()
    version = perf.version()
    with tempfile.TemporaryDirectory(prefix="lipsync-perf-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.url:
            url, served = args.url, f"the Triton server at {args.url}"
        else:
            onnx_dir = args.onnx or export_reduced(work / "onnx")
            url, manifest = stack.enter_context(embedded_server(onnx_dir, work, models))
            served = f"the embedded Triton (cpu repository; weights: {'; '.join(manifest['weights'])})"
        measurements: list[Measurement] = []
        failed: list[str] = []
        for model in models:
            try:
                measurements += measure(
                    perf,
                    url,
                    model,
                    frames=args.frames,
                    concurrency=args.concurrency,
                    work_dir=work,
                    request_count=args.request_count,
                    max_trials=args.max_trials,
                    stability=args.stability,
                )
            except PerfAnalyzerError as error:  # e.g. no stable measurement on a busy machine: go on, say so
                log.error("%s", error)
                failed.append(model)
                continue
            # perf_analyzer leaves a concurrency out of its CSV when no window there was stable: say which.
            have = {m.concurrency for m in measurements if m.model == model}
            if missing := [c for c in concurrency_levels(args.concurrency) if c not in have]:
                log.error("%s: no stable measurement at concurrency %s", model, ", ".join(map(str, missing)))
                failed += [f"{model} at concurrency {c}" for c in missing]
    if not measurements:
        log.error("nothing was measured")
        return 1
    how = (
        f"Measured {datetime.date.today().isoformat()} with {version} (gRPC) against {served}, from "
        f"{platform.node() or 'this host'} ({os.cpu_count()} CPUs, {cpu_class()}; "
        f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end).\n"
        f"Command: `python bench/perf.py {' '.join(argv if argv is not None else sys.argv[1:])}`. Each request "
        f"carries {args.frames} video frames for per-frame models and ensembles (one item for avatar/mel/audio2pose); "
        f"concurrency = requests in flight; count windows of {args.request_count} requests until 3 consecutive "
        f"windows agree within {args.stability}% (at most {args.max_trials} windows). Latencies are client-side; "
        "queue and compute are the server's averages per request (for an ensemble, as Triton reports it as a whole)."
    )
    if failed:
        how += f"\n\nNo stable measurement (left out): {', '.join(failed)}."
    write_reports(measurements, args.csv, args.markdown, how)
    log.info("wrote %s and %s", args.csv, args.markdown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
