"""Conversation sessions against a running system: first-frame latency per utterance, interrupt latency,
frame rate held, and how far the video falls behind the wall clock.

    python bench/conversation.py --url http://127.0.0.1:8000 --sessions 2 [--engine wav2lip]
                                 [--utterances 4] [--seconds 3] [--interrupt-every 2] [--seed 1] [--token T]

Each session uploads the portrait (the astronaut photo unless ``--portrait``), opens ``/ws/stream`` in
conversation mode, and then, ``--utterances`` times: waits a random gap (1–3 s, seeded), sends
``{"type": "utterance"}`` and ``--seconds`` of speech at once (``--audio`` or a voiced test signal), as a TTS
engine would; every ``--interrupt-every``-th utterance is interrupted one second after it was sent. Then
``end``. Measured from the client, on its own clock:

- **first frame** per utterance: the server's figure (its first audio byte to the fragment holding its first
  frame, from the stats) and the client's (utterance sent → that fragment received);
- **interrupt**: `interrupt` sent → the fragment holding the first idle frame received;
- **frames/s held**: frames received / wall time while the session ran (25 is real time);
- **behind**: the stats' `behind_ms` at the first and the last fragment (growth means the engine is slower
  than real time here).

All sessions come from one address: start the server with LIPSYNC_MAX_SESSIONS_PER_CLIENT ≥ --sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import add_client_arguments, parse_client_arguments, prepare, start_session


@dataclass
class SessionResult:
    first_frame_server_ms: list[float] = field(default_factory=list)
    first_frame_client_ms: list[float] = field(default_factory=list)
    interrupt_ms: list[float] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0
    behind_ms: list[float] = field(default_factory=list)
    error: str | None = None


async def _session(url: str, avatar_id: str, pcm: np.ndarray, args: argparse.Namespace, seed: int) -> SessionResult:
    result = SessionResult()
    rng = random.Random(seed)
    sent_at: dict[str, float] = {}
    interrupts: list[tuple[float, int]] = []  # (sent, first idle frame) once answered
    interrupt_sent: list[float] = []
    answered = 0  # `interrupted` answers received
    started = time.perf_counter()
    try:
        async with websockets.connect(url, max_size=None) as ws:
            await start_session(ws, avatar_id, {"engine": args.engine}, mode="conversation")

            async def drive() -> None:
                for number in range(args.utterances):
                    await asyncio.sleep(rng.uniform(1.0, 3.0))  # the pause between turns of a conversation
                    utterance = f"u{number}"
                    sent_at[utterance] = time.perf_counter()
                    await ws.send(json.dumps({"type": "utterance", "id": utterance}))
                    await ws.send(pcm.tobytes())
                    if args.interrupt_every and (number + 1) % args.interrupt_every == 0:
                        await asyncio.sleep(1.0)
                        interrupt_sent.append(time.perf_counter())
                        await ws.send(json.dumps({"type": "interrupt"}))
                await asyncio.sleep(1.0)
                await ws.send(json.dumps({"type": "end"}))

            driver = asyncio.create_task(drive())
            async for message in ws:
                now = time.perf_counter()
                if isinstance(message, bytes):
                    continue
                payload: dict[str, Any] = json.loads(message)
                if payload["type"] == "error":
                    raise RuntimeError(f"{payload['code']}: {payload['message']}")
                if payload["type"] == "interrupted":
                    # Paired with its own `interrupt` by count (the list below is emptied as they are timed).
                    interrupts.append((interrupt_sent[answered], int(payload["frame"])))
                    answered += 1
                elif payload["type"] == "stats":
                    result.frames = int(payload["frames"])
                    result.behind_ms.append(float(payload.get("behind_ms", 0.0)))
                    for figure in payload.get("utterances", []):
                        result.first_frame_server_ms.append(float(figure["first_frame_ms"]))
                        result.first_frame_client_ms.append(1e3 * (now - sent_at[figure["utterance_id"]]))
                    while interrupts and result.frames > interrupts[0][1]:  # the first idle frame has arrived
                        result.interrupt_ms.append(1e3 * (now - interrupts.pop(0)[0]))
                elif payload["type"] == "end":
                    break
            await driver
    except Exception as err:  # a benchmark reports every failure and goes on
        result.error = str(err)
    result.wall_s = time.perf_counter() - started
    return result


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "–"


async def main_async(args: argparse.Namespace) -> int:
    avatar_id, pcm, url = await prepare(args)
    results = await asyncio.gather(
        *(_session(url, avatar_id, pcm, args, args.seed * 1000 + i) for i in range(args.sessions))
    )
    print(
        f"{args.sessions} conversation sessions, engine {args.engine}, {args.utterances} utterances of "
        f"{args.seconds:g} s each (every {args.interrupt_every or '–'}th interrupted)\n"
    )
    print(
        "| session | first frame, server (ms) | first frame, client (ms) | interrupt (ms) | frames/s held | "
        "behind at start → end (ms) | error |"
    )
    print("|---:|---:|---:|---:|---:|---|---|")
    for i, r in enumerate(results):
        held = r.frames / r.wall_s if r.wall_s else 0.0
        behind = f"{r.behind_ms[0]:.0f} → {r.behind_ms[-1]:.0f}" if r.behind_ms else "–"
        print(
            f"| {i} | {_median(r.first_frame_server_ms)} | {_median(r.first_frame_client_ms)} | "
            f"{_median(r.interrupt_ms)} | {held:.1f} | {behind} | {r.error or ''} |"
        )
    ok = [r for r in results if r.error is None]
    print(
        f"\nmedians over all sessions: first frame {_median([v for r in ok for v in r.first_frame_client_ms])} ms "
        f"(client), interrupt {_median([v for r in ok for v in r.interrupt_ms])} ms; errors: {len(results) - len(ok)}"
    )
    return 0 if len(ok) == len(results) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(parser, engine="wav2lip")
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="speech per utterance")
    parser.add_argument("--interrupt-every", type=int, default=2, help="interrupt every Nth utterance (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    args = parse_client_arguments(parser)
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
