"""GFLOP per frame and ms per frame of every stage, PyTorch vs ONNX Runtime, on this machine.

    python bench/stages.py [--reduced] [--stages generator,gfpgan] [--batch 1] [--repeat 3] [--threads N]

Full-size stages are built with synthetic weights in the official layout (values do not change the cost).
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; a
multiply-add counts as 2). Times are the median of ``--repeat`` runs after one warm-up at batch ``--batch``,
divided by the batch; PyTorch and ONNX Runtime use the same number of threads. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.engines import STAGES
from export.onnx import TRACE_SIZES, export_stage, opset_for, sample_inputs
from export.stages import BUILDERS, StageFactory, Variant
from export.synthetic import write_synthetic_checkpoint
from export.weights import MANIFESTED_FILES

NETWORKS = ("audio2exp", "audio2pose", "face_recon", "kp_detector", "mapping", "generator", "gfpgan")


def _median_ms(run: Callable[[], object], repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _measure(stage: str, factory: StageFactory, args: argparse.Namespace, scratch: Path) -> str:
    import onnxruntime as ort

    spec, module = STAGES[stage], factory.build(stage)
    inputs = sample_inputs(spec, args.batch, torch.Generator().manual_seed(0), TRACE_SIZES)
    module.requires_grad_(False)  # FlopCounterMode's module tracker cannot run under no_grad; this is the same
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    gflop = counter.get_total_flops() / 1e9 / args.batch
    with torch.no_grad():
        torch_ms = _median_ms(lambda: module(*inputs), args.repeat) / args.batch
    graph = scratch / f"{stage}.onnx"
    export_stage(spec, module, graph, opset=opset_for(stage, "5d"), sizes=TRACE_SIZES)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
    ort_ms = _median_ms(lambda: session.run(None, feed), args.repeat) / args.batch
    return f"| {stage} | {gflop:.2f} | {torch_ms:.1f} | {ort_ms:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="the reduced test architecture instead of full size")
    parser.add_argument("--stages", default=",".join(NETWORKS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = None
        if not args.reduced:
            checkpoints = Path(scratch) / "checkpoints"
            for name in MANIFESTED_FILES:
                write_synthetic_checkpoint(name, checkpoints)
        factory = StageFactory(Variant(checkpoints))
        print(f"batch {args.batch}, {args.threads} threads, {'reduced' if args.reduced else 'full-size'} stages\n")
        print("| stage | GFLOP/frame | PyTorch ms/frame | ONNX Runtime ms/frame |")
        print("|---|---:|---:|---:|")
        for stage in args.stages.split(","):
            if stage not in BUILDERS:
                raise SystemExit(f"unknown stage {stage!r}")
            print(_measure(stage, factory, args, Path(scratch)), flush=True)


if __name__ == "__main__":
    main()
