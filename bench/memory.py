"""Resident memory of one CPU model instance against the rows it runs at once (what max_rows_per_run bounds).

    python bench/memory.py [--onnx DIR] [--stages generator,gfpgan] [--rows 1,2,4,8,16,32] [--threads 1]

Each (stage, rows) runs in a fresh process that does what a Python-backend instance of the ``cpu`` repository
does (export/triton_model.py): an ONNX Runtime session with the same options, fed ``rows`` rows of the stage's
inputs, run three times. The figure is the process's peak resident set (VmHWM, which includes the Python
interpreter, numpy and ONNX Runtime themselves: ≈ 100 MB), and the baseline after loading the graph before any
run. Without ``--onnx`` the reduced demo models are exported first (random weights: sizes, not values, matter).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LOG = logging.getLogger("bench.memory")

# Runs in the child: the Python-backend model's session options, then peak RSS after loading and after running.
CHILD = """
import json, sys
import numpy as np, onnxruntime as ort
from export.onnx import TRACE_SIZES, sample_inputs
from export.engines import STAGES
import torch

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
path, stage, rows, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
loaded = peak_mb()
spec = STAGES[stage]
inputs = sample_inputs(spec, rows, torch.Generator().manual_seed(0), TRACE_SIZES)
feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
for _ in range(3):
    session.run(None, feed)
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak_mb()}))
"""


def measure(onnx_dir: Path, stage: str, rows: int, threads: int) -> dict[str, float]:
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(onnx_dir / f"{stage}.onnx"), stage, str(rows), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def export_reduced(stages: list[str], out: Path) -> None:
    from export.onnx import export_and_check
    from export.stages import StageFactory, Variant

    factory = StageFactory(Variant(checkpoints=None))
    for stage in stages:
        export_and_check(stage, factory.build(stage), out, grid_sample="5d", provenance={}, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=None, help="exported graphs (default: export the reduced ones)")
    parser.add_argument("--stages", default="generator,gfpgan")
    parser.add_argument("--rows", default="1,2,4,8,16,32")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (the tests use 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stages = args.stages.split(",")
    rows = [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        onnx_dir = args.onnx or Path(scratch)
        if args.onnx is None:
            export_reduced(stages, onnx_dir)
        table = [
            "| stage | rows per run | after load (MB) | peak RSS (MB) | peak per row (MB) |",
            "|---|---|---|---|---|",
        ]
        for stage in stages:
            for count in rows:
                result = measure(onnx_dir, stage, count, args.threads)
                LOG.info("%s rows=%d: %s", stage, count, result)
                per_row = (result["peak_mb"] - result["loaded_mb"]) / count
                table.append(
                    f"| {stage} | {count} | {result['loaded_mb']:.0f} | {result['peak_mb']:.0f} | {per_row:.0f} |"
                )
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
