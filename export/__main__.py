"""``python -m export COMMAND``: the command line for weights, ONNX export and the model repository.

Commands:
  check      --checkpoints DIR [--size 256|512]   are the official files there? (exit 1 with instructions if not)
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

    synthetic = sub.add_parser("synthetic", help="write synthetic checkpoints in the official layouts")
    synthetic.add_argument("--out", type=Path, required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=_synthetic)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
