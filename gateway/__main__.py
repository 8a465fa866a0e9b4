"""``python -m gateway up [--demo]``: bring up the whole system — weights, ONNX graphs, model repository,
embedded Triton, gateway and page — step by step, saying what is missing.

Settings come from LIPSYNC_* environment variables or a .env file (``python -m gateway up --help`` lists them).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from gateway.settings import Settings
from gateway.up import bring_up


def settings_help() -> str:
    """Every setting as its environment variable, default and meaning (from gateway/settings.py)."""
    lines = ["settings (environment variables, or a .env file):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else str(default)
        lines.append(f"  LIPSYNC_{name.upper():28s} {field.description or ''} (default: {shown})")
    return "\n".join(lines)


def describe_invalid(error: ValidationError) -> str:
    """One line per bad setting: the variable, the value given and what is expected."""
    lines = []
    for item in error.errors():
        name = "LIPSYNC_" + "_".join(str(part) for part in item["loc"]).upper()
        lines.append(f"invalid setting {name}={item.get('input')!r}: {item['msg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="start embedded Triton + gateway + page",
        description="Export what is missing, start the embedded Triton (unless LIPSYNC_TRITON_URL is set), "
        "the gateway and the page; Ctrl-C stops everything.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--demo", action="store_true", help="random weights of the reduced architecture (not a result)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(demo=args.demo) if args.demo else Settings()
    except ValidationError as error:
        logging.getLogger("lipsync.up").error("%s", describe_invalid(error))
        return 2
    return bring_up(settings)


if __name__ == "__main__":
    sys.exit(main())
