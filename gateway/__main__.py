"""``python -m gateway up [--demo]``: bring up the whole system, step by step, saying what is missing.

Each step reports one of: ready, made now, or missing (with what to do). Nothing pretends: a step whose
code has not landed yet says so, and the command exits non-zero without starting a half system.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.settings import Settings
from gateway.up import bring_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start embedded Triton + gateway + page")
    up.add_argument("--demo", action="store_true", help="random weights of the reduced architecture (not a result)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(demo=args.demo) if args.demo else Settings()
    return bring_up(settings)


if __name__ == "__main__":
    sys.exit(main())
