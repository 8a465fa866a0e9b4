"""``python -m export COMMAND``: the command line for weights, ONNX export and the model repository.

Commands:
  check      --checkpoints DIR [--size 256|512]   are the official files there? (exit 1 with instructions if not)
  download   --checkpoints DIR [--size 256|512] [--gfpgan] [--base-url URL]
                                                  fetch the official files (resumable; a mirror via --base-url)
  synthetic  --out DIR [--seed N]                 write checkpoints in the official layouts, filled with
                                                  deterministic synthetic values (for tests and demos; NOT weights)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from export.official import how_to_get, missing_files

log = logging.getLogger("export")


def _check(args: argparse.Namespace) -> int:
    missing = missing_files(args.checkpoints, args.size)
    if missing:
        log.error("%s", how_to_get(missing, args.checkpoints))
        return 1
    log.info("all official files for size %d are in %s", args.size, args.checkpoints)
    return 0


def _download(args: argparse.Namespace) -> int:
    from export.download import DownloadError, download_official
    from export.official import OPTIONAL, REQUIRED_FOR_SIZE

    names = REQUIRED_FOR_SIZE[args.size] + (OPTIONAL if args.gfpgan else ())
    try:
        download_official(names, args.checkpoints, base_url=args.base_url)
    except DownloadError as err:
        log.error("%s", err)
        missing = missing_files(args.checkpoints, args.size)
        if missing:
            log.error("%s", how_to_get(missing, args.checkpoints))
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
    download.add_argument("--gfpgan", action="store_true", help="also fetch GFPGANv1.4.pth (face enhancement)")
    download.add_argument("--base-url", default=None, help="a mirror serving the files by name")
    download.set_defaults(run=_download)

    synthetic = sub.add_parser("synthetic", help="write synthetic checkpoints in the official layouts")
    synthetic.add_argument("--out", type=Path, required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=_synthetic)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
