"""Wav2Lip on this CPU: frames per second through the whole served path against raw ONNX Runtime.

    python bench/wav2lip.py [--seconds 8] [--sessions 1,2,4] [--batch 8] [--threads 0] [--int8] [--openvino] [--clip 4]
                            [--browser 8,4]

The full-size network (official layout, synthetic weights: the values do not change the cost) is exported
with the mel front-end and its ensemble glue, served by the embedded Triton (cpu repository, as ``make up``
writes it) behind the real gateway on loopback. Measured:

- **raw**: ONNX Runtime alone on the exported graph, batches of ``--batch`` frames, CPU threads as the
  Python backend uses them (``--threads``, 0 = one per core): frames per second, and GFLOP/frame
  (``torch.utils.flop_counter``) × frames/s = achieved GFLOP/s;
- **served**: N concurrent ``/ws/stream`` sessions (engine ``wav2lip``, the astronaut portrait, 512² output,
  chunks of 8 frames), each sending ``--seconds`` of a voiced test signal at once (``burst``): frames per second
  per session and in total (video frames delivered / wall time from ``start`` to ``end``), and the time to the
  first fragment; plus one session paced like a microphone (``realtime``) for the first-fragment latency.
- ``--int8``: the same with Wav2Lip served from its int8 graph (export/quantize.py, as
  ``LIPSYNC_INT8_MODELS=wav2lip`` serves it); the raw row then shows fp32 and int8, and GFLOP/s counts the fp32
  network's operations (the work done, whatever the arithmetic).
- ``--openvino``: Wav2Lip run by OpenVINO in the Python backend (``LIPSYNC_OPENVINO_MODELS=wav2lip``); the raw
  rows then show both runtimes on the same graph(s).

- ``--browser CHUNKS``: then the page in Chromium against this gateway (``bench/browser_latency.py``: both
  transports, the microphone and 5 interrupts), once per fragment size listed; ``--sessions none`` skips the
  sessions above.

The table's first line names the CPU class (``lscpu`` flags that decide the kernels: avx2, avx512f, avx512_vnni,
avx512_bf16, amx). ``ONEDNN_MAX_CPU_ISA=AVX2`` holds OpenVINO (not ONNX Runtime) to AVX2 kernels on a larger CPU.

Prints a Markdown table. Nothing here is a quality claim: the weights are synthetic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Result, _portrait, _session, _speech
from machine import cpu_class

from export.engines import STAGES
from export.onnx import TRACE_SIZES, export_and_check, sample_inputs
from export.quantize import int8_graph, quantize_stage
from export.repository import RepositorySettings, write_repository
from export.stages import BUILDERS, Variant
from export.synthetic import SyntheticWeights

LOG = logging.getLogger("bench.wav2lip")
STAGES_SERVED = ("mel", "wav2lip", "wav2lip_to_uint8")


def export_full_size(out: Path) -> float:
    """The served Wav2Lip stages at full size with synthetic official-layout weights; returns GFLOP/frame."""
    from torch.utils.flop_counter import FlopCounterMode

    variant = Variant(checkpoints=Path("synthetic"))
    weights = SyntheticWeights(seed=0)
    gflop = 0.0
    for stage in STAGES_SERVED:
        module = BUILDERS[stage](variant, weights).eval()
        export_and_check(stage, module, out, grid_sample="5d", provenance={"weights": "SYNTHETIC"}, check=False)
        if stage == "wav2lip":
            inputs = sample_inputs(STAGES[stage], 1, torch.Generator().manual_seed(0), TRACE_SIZES)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(*inputs)
            gflop = counter.get_total_flops() / 1e9
    return gflop


def raw_fps(onnx: Path, batch: int, threads: int, runtime: str = "onnxruntime", seconds: float = 20.0) -> float:
    """Frames per second of the graph alone, run as the Python backend runs it (same runtime and options)."""
    from export.triton_model import OnnxRuntimeRunner, OpenVinoRunner

    runner_type = OpenVinoRunner if runtime == "openvino" else OnnxRuntimeRunner
    runner = runner_type(onnx, threads, ["prediction"])
    inputs = sample_inputs(STAGES["wav2lip"], batch, torch.Generator().manual_seed(1), TRACE_SIZES)
    feed = {t.name: x.numpy() for t, x in zip(STAGES["wav2lip"].inputs, inputs, strict=True)}
    runner.run(feed)  # warm-up
    frames, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner.run(feed)
        frames += batch
    return frames / (time.perf_counter() - started)


def clip_avatar(seconds: float) -> bytes:
    """A ``seconds`` clip of the astronaut (512², drifting as a head does), as H.264 in MP4."""
    from video_helpers import clip_bytes, moving_face

    return clip_bytes(moving_face(round(25 * seconds), size=512))


async def served(
    url: str, sessions: int, pcm: np.ndarray, pace: str, avatar: tuple[str, bytes]
) -> tuple[list[Result], float]:
    """``avatar``: the upload's form field (``image`` or ``video``) and its bytes."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        response = await client.post("/v1/avatars", files={avatar[0]: ("avatar", avatar[1])})
        response.raise_for_status()
        avatar_id = response.json()["avatar_id"]
    args = argparse.Namespace(chunk_frames=8, pose="still", pace=pace, engine="wav2lip")
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_session(url.replace("http", "ws") + "/ws/stream", avatar_id, pcm, args) for _ in range(sessions))
    )
    return list(results), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per session")
    parser.add_argument("--sessions", default="1,2,4", help="concurrent sessions to try")
    parser.add_argument("--batch", type=int, default=8, help="frames per ONNX Runtime run (raw)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, 0 = one per core")
    parser.add_argument("--int8", action="store_true", help="serve Wav2Lip from its int8 graph")
    parser.add_argument("--openvino", action="store_true", help="serve Wav2Lip in OpenVINO instead of ONNX Runtime")
    parser.add_argument(
        "--clip", type=float, default=0.0, help="also serve a video avatar of this many seconds (0: photo only)"
    )
    parser.add_argument(
        "--browser", default="", help="chunk sizes (e.g. 8,4): also run bench/browser_latency.py on this gateway"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from gateway.settings import Settings
    from gateway.triton.server import EmbeddedTriton

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from gateway_helpers import running_gateway

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        onnx = Path(scratch) / "onnx"
        gflop = export_full_size(onnx)
        if args.int8:
            quantize_stage(onnx, "wav2lip")
        graphs = {"fp32": onnx / "wav2lip.onnx", **({"int8": int8_graph(onnx, "wav2lip")} if args.int8 else {})}
        runtimes = ("onnxruntime", "openvino") if args.openvino else ("onnxruntime",)
        for precision, graph in graphs.items():
            for runtime in runtimes:
                fps = raw_fps(graph, args.batch, args.threads, runtime)
                rows.append(
                    f"| raw {runtime} {precision}, batch {args.batch} | 1 | {fps:.1f} | {fps:.1f} | – | "
                    f"{gflop * fps:.0f} |"
                )
                LOG.info("raw %s %s: %.1f frames/s (%.2f GFLOP/frame)", runtime, precision, fps, gflop)
        repository_settings = RepositorySettings(
            target="cpu",
            int8_models=("wav2lip",) if args.int8 else (),
            openvino_models=("wav2lip",) if args.openvino else (),
        )
        served_as = " ".join([*(["int8"] if args.int8 else []), *(["openvino"] if args.openvino else [])])
        repository = write_repository(onnx, Path(scratch) / "repository", repository_settings)
        pcm = _speech(None, args.seconds)
        with EmbeddedTriton().start(repository.path, auto_complete_config=False) as triton:
            settings = Settings(  # type: ignore[call-arg]
                triton_url=triton.grpc_url, demo=True, max_sessions=16, max_sessions_per_client=16
            )
            with running_gateway(settings) as url:
                avatars = [("photo", ("image", _portrait(None)))]
                if args.clip:
                    avatars.append((f"{args.clip:g} s clip", ("video", clip_avatar(args.clip))))
                bursts = [] if args.sessions == "none" else [int(n) for n in args.sessions.split(",")]
                runs = [
                    (kind, avatar, pace, count)
                    for kind, avatar in avatars
                    for pace, counts in (("burst", bursts), ("realtime", [1] if bursts else []))
                    for count in counts
                ]
                for kind, avatar, pace, count in runs:
                    results, wall = asyncio.run(served(url, count, pcm, pace, avatar))
                    failed = [r.error for r in results if r.error]
                    if failed:
                        LOG.error("%d sessions, %s: %s", count, pace, failed[0])
                        continue
                    frames = [25 * r.video_seconds for r in results]
                    per_session = statistics.median(f / r.wall_s for f, r in zip(frames, results, strict=True))
                    total = sum(frames) / wall
                    first = statistics.median(r.first_fragment_s or 0.0 for r in results)
                    rows.append(
                        f"| served {served_as or 'fp32'} ({pace}, {kind}) | {count} | {per_session:.1f} | "
                        f"{total:.1f} | {first:.2f} | {gflop * total:.0f} |"
                    )
                    LOG.info("%s × %d: %.1f frames/s per session, %.1f in total", pace, count, per_session, total)
                for chunk in [c for c in args.browser.split(",") if c]:
                    browser = Path(__file__).with_name("browser_latency.py")
                    command = [sys.executable, str(browser), "--url", url, "--interrupts", "5", "--chunk", chunk]
                    subprocess.run([*command, "--server-pid", str(os.getpid()), "--no-assert"], check=True)
    cores = os.cpu_count()
    print(f"Wav2Lip full size ({gflop:.2f} GFLOP/frame), {cores} CPU cores, {args.seconds:g} s of audio per session")
    print(f"CPU: {cpu_class()}\n")
    print("| path | sessions | frames/s per session | frames/s total | first fragment (s) | GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
