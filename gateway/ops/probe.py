"""Kubernetes hooks for a gateway pod (deploy/k8s), run inside the pod: ``python -m gateway.ops.probe ready|drain``.

``ready``  exits 0 when ``GET /readyz`` answers 200. Unlike an ``httpGet`` probe it sends ``LIPSYNC_AUTH_TOKEN``
           as a bearer token when one is set, since /readyz asks for it then.
``drain``  for the preStop hook: by then the pod has left the Service, so no new session arrives; wait until
           ``lipsync_active_sessions`` on /metrics reads 0 (or ``--max-wait-s`` has passed), so a scale-down or
           a rollout lets sessions finish instead of cutting them.

Both call ``http://127.0.0.1:$LIPSYNC_PORT`` (default 8000). Standard library only: a probe is one short Python
start, with nothing of the gateway imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

SESSIONS_METRIC = "lipsync_active_sessions"


def _base_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('LIPSYNC_PORT', '8000')}"


def _get(url: str, timeout_s: float) -> tuple[int, str]:
    headers = {}
    if token := os.environ.get("LIPSYNC_AUTH_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def ready(base_url: str, timeout_s: float = 3.0) -> bool:
    try:
        status, body = _get(f"{base_url}/readyz", timeout_s)
    except OSError as error:
        print(f"not ready: {error}", file=sys.stderr)
        return False
    if status != 200:
        print(f"not ready: /readyz answered {status}: {body[:300]}", file=sys.stderr)
    return status == 200


def active_sessions(metrics_text: str) -> float:
    """The value of the unlabelled ``lipsync_active_sessions`` gauge in Prometheus's text format."""
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name == SESSIONS_METRIC:
            return float(value.split()[0])
    raise ValueError(f"{SESSIONS_METRIC} is not in the metrics")


def drain(base_url: str, max_wait_s: float, poll_s: float = 5.0, timeout_s: float = 3.0) -> int:
    """Wait until no session is active or ``max_wait_s`` has passed; returns the sessions left (0: drained)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        try:
            status, body = _get(f"{base_url}/metrics", timeout_s)
            sessions = int(active_sessions(body)) if status == 200 else None
        except (OSError, ValueError) as error:
            print(f"drain: cannot read the session count ({error}); not waiting", file=sys.stderr)
            return 0
        if sessions is None:
            print(f"drain: /metrics answered {status}; not waiting", file=sys.stderr)
            return 0
        if sessions <= 0:
            return 0
        if time.monotonic() >= deadline:
            print(f"drain: {sessions} session(s) still active after {max_wait_s:.0f} s; stopping", file=sys.stderr)
            return sessions
        time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.ops.probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ready", help="exit 0 when /readyz answers 200")
    drain_parser = sub.add_parser("drain", help="wait for the active sessions to end (preStop)")
    drain_parser.add_argument("--max-wait-s", type=float, default=900.0)
    drain_parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "ready":
        return 0 if ready(_base_url()) else 1
    drain(_base_url(), args.max_wait_s, args.poll_s)
    return 0  # the pod stops either way; what was left is in the message


if __name__ == "__main__":
    sys.exit(main())
