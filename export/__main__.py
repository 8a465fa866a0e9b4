"""``python -m export COMMAND``: the command line for weights, ONNX export and the model repository.

Commands:
  check      --checkpoints DIR [--size 256|512]   are the official files there? (exit 1 with instructions if not)
  download   --checkpoints DIR [--size 256|512] [--base-url URL] [--STAGE] [--ENGINE [FILE] --accept-ENGINE-licence]
                                                  fetch the official files (resumable; a mirror via --base-url);
                                                  an optional stage's with --STAGE, a licensed engine's only
                                                  with its licence flag (`download --help` lists them)
  onnx       --out DIR (--checkpoints DIR [--size 256|512] [--ENGINE FILE] | --reduced) [--grid-sample 4d|5d]
             [--stages a,b,...] [--with-STAGE | --with-optional] [--check]
                                                  one ONNX graph + JSON sidecar per stage; a licensed engine's
                                                  stages when DIR holds its file (or --ENGINE names one)
  repository --onnx DIR --out DIR [--target cpu|gpu] [--max-queue-delay-us N] [--instances N] [...]
                                                  the Triton model repository (configs generated from the specs)
  quantize   --onnx DIR [--stages a,b] [--calibration-audio F --calibration-faces F.npz | --calibration F]
             [--if-stale]                         int8 graphs for the cpu target, checked against fp32
  synthetic  --out DIR [--seed N]                 write checkpoints in the official layouts, filled with
                                                  deterministic synthetic values (for tests and demos; NOT weights)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from export.engines import QUANTIZABLE
from export.official import LICENSED, OPTIONAL_FILES, how_to_get, missing_files

if TYPE_CHECKING:
    from export.stages import Variant

log = logging.getLogger("export")


def _check(args: argparse.Namespace) -> int:
    missing = missing_files(args.checkpoints, args.size)
    if missing:
        log.error("%s", how_to_get(missing, args.checkpoints))
        return 1
    from export.official import OFFICIAL_FILES, verify_present

    # Files that are not the published ones (synthetic weights for tests, another release) still load if their
    # layout is right, and are then served labelled DEMO: said here, not refused.
    wrong, unverified = verify_present(args.checkpoints, list(OFFICIAL_FILES))
    for problem in wrong:
        log.warning("not the published file: %s", problem)
    for name in unverified:
        log.warning("%s has no published SHA-256 to check it against", name)
    log.info("all official files for size %d are in %s", args.size, args.checkpoints)
    return 0


def _download(args: argparse.Namespace) -> int:
    from export.download import DownloadError, download_official
    from export.official import OFFICIAL_FILES, REQUIRED_FOR_SIZE

    names = REQUIRED_FOR_SIZE[args.size]
    names += tuple(name for stage, files in OPTIONAL_FILES.items() if getattr(args, stage) for name in files)
    for engine, part in LICENSED.items():
        chosen = getattr(args, engine)
        if not chosen:
            continue
        if not getattr(args, f"accept_{engine}_licence"):
            log.error(
                "%s\nNothing was downloaded. To fetch %s, confirm that your use keeps these terms by adding "
                "--accept-%s-licence (or download it by hand from %s).",
                part.licence,
                chosen,
                engine,
                OFFICIAL_FILES[chosen].url,
            )
            return 2
        log.warning("fetching %s under its licence terms: %s", chosen, part.licence)
        names += (chosen,)
    try:
        download_official(names, args.checkpoints, base_url=args.base_url)
    except DownloadError as err:
        log.error("%s", err)
        missing = missing_files(args.checkpoints, args.size)
        if missing:
            log.error("%s", how_to_get(missing, args.checkpoints))
        return 1
    return 0


def default_stages(variant: Variant, with_optional: Iterable[str] = ()) -> list[str]:
    """What `onnx` exports without --stages: every stage, the optional ones (GFPGAN) only when asked for, and a
    licensed engine's only when its weights are there (always for the reduced architecture)."""
    from export.stages import BUILDERS

    asked = set(with_optional)
    stages = [s for s in BUILDERS if s not in OPTIONAL_FILES or s in asked]
    for engine, part in LICENSED.items():
        path = variant.file(part.files[0].name)
        if path is not None and not path.is_file():
            log.info("not exporting %s: %s is not there (optional; %s)", engine, path, part.files[0].purpose)
            own = {stage.name for stage in part.stages}
            stages = [s for s in stages if s not in own]
    return stages


def optional_weights_here(variant: Variant, stage: str) -> bool:
    """Whether an optional stage's weights (the enhancer's) are there: always for the reduced architecture's
    random ones."""
    paths = [variant.file(name) for name in OPTIONAL_FILES[stage]]
    return variant.reduced or all(path is not None and path.is_file() for path in paths)


def _onnx(args: argparse.Namespace) -> int:
    from export.engines import STAGES
    from export.official import file_for_size
    from export.onnx import export_and_check
    from export.stages import BUILDERS, StageFactory, Variant

    if args.reduced == (args.checkpoints is not None):
        log.error("give exactly one of --checkpoints DIR (official weights) or --reduced (random demo weights)")
        return 2
    named = [engine for engine in LICENSED if getattr(args, engine) is not None]
    if args.reduced and named:
        log.error("--%s FILE loads official weights; it does not go with --reduced", named[0])
        return 2
    files = tuple((LICENSED[engine].files[0].name, getattr(args, engine)) for engine in named)
    variant = Variant(None if args.reduced else args.checkpoints, args.size, args.grid_sample, args.seed, files)
    with_optional = [
        stage
        for stage in OPTIONAL_FILES
        if getattr(args, f"with_{stage}") or (args.with_optional and optional_weights_here(variant, stage))
    ]
    stages = args.stages.split(",") if args.stages else default_stages(variant, with_optional)
    if unknown := [s for s in stages if s not in BUILDERS]:
        log.error("unknown stage(s) %s; stages: %s", ", ".join(unknown), ", ".join(BUILDERS))
        return 2
    if variant.reduced:
        log.warning("exporting the REDUCED architecture with RANDOM weights: for tests and demos, not results")
    else:
        # Only the files the chosen stages read must be there (one engine's stages need no other engine's files).
        reads = {stage: STAGES[stage].weights_file for stage in stages if STAGES[stage].weights_file}
        needed = {file_for_size(name, args.size) for name in reads.values()}
        if missing := [f for f in missing_files(args.checkpoints, args.size) if f.name in needed]:
            log.error("%s", how_to_get(missing, args.checkpoints))
            return 1
        for stage, name in reads.items():
            path = variant.file(name)
            if path is not None and not path.is_file():
                log.error("the %s stage needs %s, which does not exist", stage, path)
                return 1
    factory = StageFactory(variant)
    for stage in tqdm(stages, desc="export", unit="stage"):
        export_and_check(
            stage,
            factory.build(stage),
            args.out,
            grid_sample=args.grid_sample,
            provenance=variant.describe(),
            check=args.check,
        )
    return 0


def _repository(args: argparse.Namespace) -> int:
    from export.repository import RepositorySettings, write_repository

    try:
        settings = RepositorySettings(
            target=args.target,
            frame_batch=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            preferred_batch_sizes=tuple(int(size) for size in args.preferred_batch_sizes.split(",") if size),
            instances=args.instances,
            intra_op_threads=args.threads,
            cpu_rows_per_run=args.rows_per_run,
            fp16=not args.fp32,
            fp16_generator=args.fp16_generator,
            trt_cache_dir=args.trt_cache,
            int8_models=tuple(name for name in args.int8.split(",") if name),
            openvino_models=tuple(name for name in args.openvino.split(",") if name),
            max_queue_size=args.max_queue_size,
            queue_gateways=args.queue_gateways,
        )
        write_repository(args.onnx, args.out, settings)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from export.quantize import calibration_from_media, int8_is_current, load_calibration, load_faces, quantize_stage

    if args.calibration and args.calibration_audio:
        log.error("give --calibration FILE.npz or --calibration-audio with --calibration-faces, not both")
        return 2
    if bool(args.calibration_audio) != bool(args.calibration_faces):
        log.error("--calibration-audio and --calibration-faces go together (speech, and the faces to say it)")
        return 2
    try:
        for stage in tqdm(args.stages.split(","), desc="int8", unit="stage"):
            if args.if_stale and int8_is_current(args.onnx, stage):
                log.info("%s: the int8 graph is current (made from this %s.onnx)", stage, stage)
                continue
            calibration, described = None, ""
            if args.calibration:
                calibration, described = load_calibration(args.calibration, stage), args.calibration.name
            elif args.calibration_audio:
                faces = load_faces(args.calibration_faces, stage)
                calibration = calibration_from_media(stage, args.calibration_audio, faces)
                described = f"{args.calibration_audio.name} with {len(faces)} face(s)"
            quantize_stage(args.onnx, stage, calibration, described=described)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from export.synthetic import write_synthetic_checkpoint
    from export.weights import MANIFESTED_FILES

    for name in tqdm(MANIFESTED_FILES, desc="synthetic checkpoints", unit="file"):
        path = write_synthetic_checkpoint(name, args.out, seed=args.seed)
        log.info("wrote %s (SYNTHETIC values, not official weights)", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="check that the official checkpoint files are present")
    check.add_argument("--checkpoints", type=Path, required=True)
    check.add_argument("--size", type=int, choices=(256, 512), default=256)
    check.set_defaults(run=_check)

    download = sub.add_parser("download", help="download the official checkpoint files")
    download.add_argument("--checkpoints", type=Path, required=True)
    download.add_argument("--size", type=int, choices=(256, 512), default=256)
    download.add_argument("--base-url", default=None, help="a mirror serving the files by name")
    for stage, files in OPTIONAL_FILES.items():
        download.add_argument(f"--{stage}", action="store_true", help=f"also fetch {', '.join(files)} ({stage})")
    for engine, part in LICENSED.items():
        default, choices = part.files[0].name, [f.name for f in part.files]
        download.add_argument(
            f"--{engine}",
            nargs="?",
            const=default,
            choices=choices,
            default=None,
            help=f"also fetch a {engine} file (default {default}); needs --accept-{engine}-licence",
        )
        download.add_argument(
            f"--accept-{engine}-licence", action="store_true", help=f"confirm that you keep its terms: {part.licence}"
        )
    download.set_defaults(run=_download)

    onnx = sub.add_parser("onnx", help="export every stage to ONNX with a JSON sidecar")
    onnx.add_argument("--out", type=Path, required=True)
    onnx.add_argument("--checkpoints", type=Path, default=None, help="directory with the official files")
    onnx.add_argument("--reduced", action="store_true", help="reduced architecture, random weights (demo/tests)")
    onnx.add_argument("--size", type=int, choices=(256, 512), default=256)
    onnx.add_argument("--grid-sample", choices=("5d", "4d"), default="5d", help="4d: the TensorRT-friendly form")
    onnx.add_argument("--stages", default=None, help="comma-separated subset (default: all)")
    for stage, files in OPTIONAL_FILES.items():
        onnx.add_argument(
            f"--with-{stage}", action="store_true", help=f"also export {stage} (needs {', '.join(files)})"
        )
    onnx.add_argument(
        "--with-optional", action="store_true", help="also export the optional stages whose weights are there"
    )
    for engine, part in LICENSED.items():
        onnx.add_argument(
            f"--{engine}",
            type=Path,
            default=None,
            help=f"{engine} checkpoint file (default: {part.files[0].name} in --checkpoints, if there)",
        )
    onnx.add_argument("--seed", type=int, default=0, help="seed of the reduced random weights")
    onnx.add_argument("--check", action="store_true", help="compare each graph with PyTorch (batch 1 and 3)")
    onnx.set_defaults(run=_onnx)

    repository = sub.add_parser("repository", help="write the Triton model repository from the exported graphs")
    repository.add_argument("--onnx", type=Path, required=True, help="directory written by `onnx`")
    repository.add_argument("--out", type=Path, required=True)
    repository.add_argument("--target", choices=("cpu", "gpu"), default="cpu", help="cpu: the embedded server")
    repository.add_argument("--max-batch-size", type=int, default=32, help="frames per execution, per-frame models")
    repository.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher's wait")
    repository.add_argument("--preferred-batch-sizes", default="", help="comma-separated, e.g. 8,16")
    repository.add_argument(
        "--max-queue-size",
        type=int,
        default=None,
        help="requests a batched model may queue before Triton refuses more (default: sized per model)",
    )
    repository.add_argument(
        "--queue-gateways", type=int, default=4, help="gateways whose full load the default queue sizes admit"
    )
    repository.add_argument("--instances", type=int, default=1, help="instances per model (per GPU)")
    repository.add_argument("--threads", type=int, default=0, help="cpu: ONNX Runtime threads (0 = one per core)")
    repository.add_argument(
        "--rows-per-run", type=int, default=4, help="cpu: rows per ONNX Runtime run (bounds memory; 0 = all)"
    )
    repository.add_argument("--fp32", action="store_true", help="gpu: TensorRT in fp32 instead of fp16")
    repository.add_argument(
        "--fp16-generator",
        action="store_true",
        help="gpu: the generator in fp16 too (faster, but its sampling coordinates round to fp16: docs/gpu.md)",
    )
    repository.add_argument("--trt-cache", default="/trt_cache", help="gpu: engine cache path in the container")
    repository.add_argument(
        "--int8", default="", help="cpu: comma-separated models to serve from their int8 graphs (`quantize`)"
    )
    repository.add_argument(
        "--openvino", default="", help="cpu: comma-separated models run by OpenVINO instead of ONNX Runtime"
    )
    repository.set_defaults(run=_repository)

    quantize = sub.add_parser("quantize", help="int8 graphs for CPU serving, checked against fp32 (export/quantize.py)")
    quantize.add_argument("--onnx", type=Path, required=True, help="directory written by `onnx`")
    quantize.add_argument(
        "--stages", default=",".join(QUANTIZABLE), help=f"comma-separated (default: {','.join(QUANTIZABLE)})"
    )
    quantize.add_argument(
        "--calibration", type=Path, default=None, help=".npz of the model's inputs from real speech and faces"
    )
    quantize.add_argument("--calibration-audio", type=Path, default=None, help="real speech (any format FFmpeg reads)")
    quantize.add_argument(
        "--calibration-faces",
        type=Path,
        default=None,
        help="the face inputs of the faces to serve (.npz, array `face`), as the engine's calibration tool writes them",
    )
    quantize.add_argument(
        "--if-stale", action="store_true", help="only where the int8 graph is missing or made from another export"
    )
    quantize.set_defaults(run=_quantize)

    synthetic = sub.add_parser("synthetic", help="write synthetic checkpoints in the official layouts")
    synthetic.add_argument("--out", type=Path, required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=_synthetic)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
