"""``python -m gateway up [--demo]``: bring up the whole system — weights, ONNX graphs, model repository,
embedded Triton, gateway and page — step by step, saying what is missing.
``python -m gateway serve``: the gateway alone, for Triton servers elsewhere (LIPSYNC_TRITON_URL).
``python -m gateway fleet --tritons N --gateways M [--demo]``: several Tritons and gateways and a Redis on
this machine.

Settings come from LIPSYNC_* environment variables or a .env file (``python -m gateway up --help`` lists them).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from gateway.ops.fleet import Fleet
from gateway.ops.up import bring_up, prepare_repository, serve_gateway
from gateway.settings import SECRET_SETTINGS, Settings
from gateway.triton.server import exit_on_signals


def settings_help() -> str:
    """Every setting as its environment variable, default and meaning (from gateway/settings.py)."""
    lines = ["settings (environment variables, or a .env file):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else str(default)
        lines.append(f"  LIPSYNC_{name.upper():28s} {field.description or ''} (default: {shown})")
    return "\n".join(lines)


def describe_invalid(error: ValidationError) -> str:
    """One line per bad setting: the variable, the value given (``(hidden)`` for a secret) and what is expected."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a rule across settings: its message names them
            lines.append(f"refusing to start: {message}")
            continue
        # A setting read under an alias reports the alias (already prefixed): LIPSYNC_ once, either way.
        name = "LIPSYNC_" + "_".join(str(part) for part in item["loc"]).upper().removeprefix("LIPSYNC_")
        # A refused secret is still somebody's secret (or a typo of it): the log must not keep it.
        shown = "(hidden)" if item["loc"][0] in SECRET_SETTINGS else repr(item.get("input"))
        lines.append(f"invalid setting {name}={shown}: {message}")
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
    sub.add_parser(
        "serve",
        help="the gateway alone, for Triton servers elsewhere",
        description="The gateway and page for the Triton servers of LIPSYNC_TRITON_URL (nothing is exported).",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet = sub.add_parser(
        "fleet",
        help="several Tritons and gateways and a Redis, on this machine",
        description="Export what is missing, then start N embedded Tritons, M gateways (each balancing over "
        "every Triton) and a Redis for shared avatars, on loopback; Ctrl-C stops them all.",
    )
    fleet.add_argument("--tritons", type=int, default=2)
    fleet.add_argument("--gateways", type=int, default=2)
    fleet.add_argument("--demo", action="store_true", help="random weights of the reduced architecture (not a result)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(demo=True) if getattr(args, "demo", False) else Settings()
    except ValidationError as error:
        logging.getLogger("lipsync.up").error("%s", describe_invalid(error))
        return 2
    if args.command == "serve":
        return serve_gateway(settings)
    if args.command == "fleet":
        return run_fleet(settings, args.tritons, args.gateways)
    return bring_up(settings)


def run_fleet(settings: Settings, tritons: int, gateways: int) -> int:
    if not (1 <= tritons <= 8 and 1 <= gateways <= 8):
        logging.getLogger("lipsync.fleet").error("--tritons and --gateways must be 1..8")
        return 2
    prepared = prepare_repository(settings)
    if prepared is None:
        return 1
    env = {"LIPSYNC_DEMO": "1" if prepared.demo else "0"}
    exit_on_signals()
    try:
        with Fleet(prepared.model_repository, tritons, gateways, env).start() as fleet:
            for url in fleet.gateway_urls:
                logging.getLogger("lipsync.fleet").info("gateway: %s/", url)
            fleet.gateway_processes[0].wait()  # until Ctrl-C (or the first gateway ends)
    except KeyboardInterrupt:
        logging.getLogger("lipsync.fleet").info("stopping the fleet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
