"""The int8 error of full-size Wav2Lip per CPU kernel class: ONNX Runtime's AVX2 kernels against this CPU's own.

    python bench/int8_isa.py [--rows 16] [--cpu-model Haswell-v4]

Without VNNI, ONNX Runtime's u8×s8 convolutions add pairs of products in 16 bits, which weights in the full
8-bit range can saturate; `python -m export quantize` therefore keeps weights in 7 bits (``reduce_range``).
This measures what that choice is worth, on the kernels it is for, from any x86-64 host:

- the full-size network (official layout, synthetic weights) is exported and quantized twice, weights in
  7 bits and in 8 bits, with the synthetic calibration inputs;
- held-out synthetic inputs are run through the fp32 graph and both int8 graphs, once natively and once
  under QEMU's user-mode emulator with a CPU model that has AVX2 and FMA but no AVX-512 (``apt install
  qemu-user``; ONNX Runtime reads the emulated CPUID and dispatches its AVX2 kernels; the child process reports
  the kernel class PyTorch reads from the same CPUID);
- each int8 output (ONNX Runtime's, and OpenVINO's where it is installed: the cpu repository may serve the int8
  graph in either) is compared with ONNX Runtime's fp32 output in the same run: the error against the output's
  variation (export/quantize.py's measure, bound 0.1) and the largest difference in uint8 levels.

The emulator is far slower than the CPU (no timing here); the arithmetic is the kernels'. Prints a Markdown
table naming both CPU classes. The weights are synthetic: this is about arithmetic, not quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_class

LOG = logging.getLogger("bench.int8_isa")
STAGE = "wav2lip"
GRAPHS = ("fp32", "int8 weights 7 bits", "int8 weights 8 bits")


def prepare(folder: Path, rows: int) -> None:
    """fp32.onnx, int8-7.onnx, int8-8.onnx and held_out.npz in ``folder``."""
    from wav2lip import export_full_size  # bench/wav2lip.py: the served stages at full size, synthetic weights

    from export.quantize import int8_graph, quantize_stage, synthetic_inputs

    onnx = folder / "onnx"
    export_full_size(onnx)
    shutil.copyfile(onnx / f"{STAGE}.onnx", folder / "fp32.onnx")
    for bits in (7, 8):
        quantize_stage(onnx, STAGE, reduce_range=bits == 7)
        shutil.copyfile(int8_graph(onnx, STAGE), folder / f"int8-{bits}.onnx")
    np.savez(folder / "held_out.npz", **synthetic_inputs(STAGE, rows, seed=1))


def child(folder: Path) -> None:
    """Run the three graphs on the held-out inputs with this process's CPU; print JSON."""
    import onnxruntime as ort
    import torch

    from export.quantize import variation_error

    with np.load(folder / "held_out.npz") as data:
        feed = {name: data[name] for name in data.files}
    outputs = {}
    for name, graph in zip(GRAPHS, ("fp32.onnx", "int8-7.onnx", "int8-8.onnx"), strict=True):
        session = ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
        outputs[f"{name}, ONNX Runtime"] = np.asarray(session.run(None, feed)[0], dtype=np.float64)
        if name != "fp32" and importlib.util.find_spec("openvino") is not None:
            # The cpu repository may serve the int8 graph in OpenVINO, whose kernels are its own.
            from export.engines import STAGES
            from export.triton_model import OpenVinoRunner

            runner = OpenVinoRunner(folder / graph, 0, [STAGES[STAGE].outputs[0].name])
            outputs[f"{name}, OpenVINO"] = np.asarray(runner.run(feed)[0], dtype=np.float64)
    want = outputs["fp32, ONNX Runtime"]
    errors = {
        name: {
            "relative_to_variation": variation_error(output, want),
            "max_abs_255": float(np.abs(output - want).max() * 255),
        }
        for name, output in outputs.items()
        if not name.startswith("fp32")
    }
    # What the CPU (or the emulator's model) reports, as a runtime reads it: PyTorch's kernel class from CPUID.
    print(json.dumps({"cpu_reports": torch.backends.cpu.get_cpu_capability(), "errors": errors}))


def run_child(folder: Path, emulate: str | None) -> dict[str, object]:
    prefix = [] if emulate is None else ["qemu-x86_64", "-cpu", emulate]
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child", str(folder)]
    LOG.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16, help="held-out frames")
    parser.add_argument("--cpu-model", default="Haswell-v4", help="QEMU's CPU model for the AVX2 run")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("qemu-x86_64") is None:
        LOG.error("qemu-x86_64 is not installed (apt install qemu-user): it runs the AVX2 kernels here")
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        prepare(folder, args.rows)
        runs = {f"this CPU ({cpu_class()})": run_child(folder, None)}
        runs[f"QEMU {args.cpu_model} (emulated)"] = run_child(folder, args.cpu_model)
    print(f"Full-size Wav2Lip, synthetic weights, {args.rows} held-out synthetic frames; error of int8 against fp32")
    print("in the same run (bound 0.1 of the output's variation).\n")
    print("| run on | kernel class it reports | graph | error / variation | max difference (uint8 levels) |")
    print("|---|---|---|---:|---:|")
    for where, run in runs.items():
        errors = run["errors"]
        assert isinstance(errors, dict)
        for graph, error in errors.items():
            print(
                f"| {where} | {run['cpu_reports']} | {graph} | "
                f"{error['relative_to_variation']:.4f} | {error['max_abs_255']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
