"""Soak: many sessions for a long time against a running system, and the resident memory of every process.

    python bench/soak.py --url http://127.0.0.1:8000 --sessions 4 --minutes 30 [--clips 2] [--short 50]
                         [--engine wav2lip] [--pid PID] [--interval 5] [--csv soak.csv] [--token T]

Against a gateway started with ``python -m gateway up --demo`` (all sessions come from one address: start it
with LIPSYNC_MAX_SESSIONS_PER_CLIENT ≥ --sessions). For ``--minutes``, ``--sessions`` sessions run at once:
``--sessions − --clips`` conversations (idle at 25 fps on the server's clock, an utterance of ``--burst-seconds``
of speech sent at once every ``--burst-every`` seconds, as a voice agent's TTS would) and ``--clips`` slots
that stream clip after clip of ``--clip-seconds`` at the speed of speech (``bench/load.py``'s session). Then the
conversations end and ``--short`` short clip sessions run, ``--sessions`` at a time.

Every ``--interval`` seconds it samples the resident memory (VmRSS from /proc) of the gateway process (``--pid``,
or the one process whose command line runs ``gateway up``/``serve``) and of every process below it (the
embedded tritonserver and one Python-backend stub per model instance), and ``lipsync_active_sessions`` from
``/metrics``. Written: one CSV row per process and sample; printed: per process the memory at the start, after
the first minute and at the end, the peak, and the slope in MB/min by least squares over the soak after its
first minute (flat memory: close to 0), then the errors and whether the active sessions went back to 0.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import PIECE, Result, add_client_arguments, parse_client_arguments, prepare, start_session
from load import _session as clip_session

log = logging.getLogger("soak")

WARMUP_S = 60.0  # the slope leaves out the first minute (buffers, caches and encoders reach their size)


# ------------------------------------------------------------------------------------------ processes


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:  # the process ended between listing and reading
        return None


def _parents() -> dict[int, int]:
    """pid → parent pid of every process (from /proc/<pid>/stat; the name may hold spaces, so after its ')')."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read(f"/proc/{entry}/stat")) is not None:
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _cmdline(pid: int) -> list[str]:
    return [part for part in (_read(f"/proc/{pid}/cmdline") or "").split("\0") if part]


def find_gateway() -> int:
    """The one process running ``python -m gateway up|serve`` (else ask for --pid)."""
    found = []
    for pid in _parents():
        args = _cmdline(pid)
        for i, arg in enumerate(args[:-2]):
            if arg == "-m" and args[i + 1] == "gateway" and args[i + 2] in ("up", "serve") and pid != os.getpid():
                found.append(pid)
    if len(found) != 1:
        raise SystemExit(f"found {len(found)} gateway processes ({found}); name one with --pid")
    return found[0]


def _label(pid: int, root: int) -> str:
    """gateway, tritonserver, or stub:<model> (a Python-backend stub's model directory is in its arguments)."""
    if pid == root:
        return "gateway"
    args = _cmdline(pid)
    name = (_read(f"/proc/{pid}/comm") or "?").strip()
    if "stub" in name or any("python_backend_stub" in a for a in args[:1]):
        models = [Path(a).parent.parent.name for a in args if a.endswith("model.py")]
        return f"stub:{models[0]}" if models else f"stub:{pid}"
    return name


def _rss_mb(pid: int) -> float | None:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None  # a zombie has no memory line


def tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class Sample:
    t_s: float
    phase: str
    active_sessions: float | None
    rss_mb: dict[tuple[int, str], float]


async def _active_sessions(client: httpx.AsyncClient) -> float | None:
    try:
        response = await client.get("/metrics")
        for line in response.text.splitlines():
            if line.startswith("lipsync_active_sessions "):
                return float(line.split()[1])
    except httpx.HTTPError as err:
        log.warning("/metrics: %s", err)
    return None


@dataclass
class Sampler:
    root: int
    client: httpx.AsyncClient
    started: float = field(default_factory=time.perf_counter)
    samples: list[Sample] = field(default_factory=list)
    phase: str = "soak"

    async def sample(self) -> Sample:
        rss = {}
        for pid in tree(self.root):
            if (mb := _rss_mb(pid)) is not None:
                rss[(pid, _label(pid, self.root))] = mb
        sample = Sample(time.perf_counter() - self.started, self.phase, await _active_sessions(self.client), rss)
        self.samples.append(sample)
        return sample

    async def run(self, interval_s: float) -> None:
        while True:
            sample = await self.sample()
            gateway = sum(mb for (_, label), mb in sample.rss_mb.items() if label == "gateway")
            log.info(
                "%6.0f s %s: gateway %.0f MB, active %s", sample.t_s, sample.phase, gateway, sample.active_sessions
            )
            await asyncio.sleep(interval_s)  # the sampling period, not synchronisation


# ------------------------------------------------------------------------------------------ sessions


@dataclass
class Conversed:
    fragments: int = 0
    frames: int = 0
    utterances: int = 0
    error: str | None = None


async def conversation(
    ws_url: str, avatar_id: str, speech: np.ndarray, args: argparse.Namespace, until: float
) -> Conversed:
    """A conversation session until ``until`` (perf_counter): an utterance every --burst-every seconds."""
    result = Conversed()
    try:
        async with websockets.connect(ws_url, max_size=None) as ws:
            await start_session(ws, avatar_id, {"engine": args.engine}, mode="conversation")

            async def speak() -> None:
                while time.perf_counter() + args.burst_every < until:
                    await asyncio.sleep(args.burst_every)  # the pause between turns, like a voice agent's
                    await ws.send(json.dumps({"type": "utterance", "id": f"u{result.utterances}"}))
                    await ws.send(speech.tobytes())
                    result.utterances += 1
                await asyncio.sleep(max(until - time.perf_counter(), 0.0))
                await ws.send(json.dumps({"type": "end"}))

            speaker = asyncio.create_task(speak())
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        result.fragments += 1
                        continue
                    payload = json.loads(message)
                    if payload["type"] == "error":
                        raise RuntimeError(f"{payload['code']}: {payload['message']}")
                    if payload["type"] == "stats":
                        result.frames = int(payload["frames"])
                    elif payload["type"] == "end":
                        break
            finally:
                speaker.cancel()
    except Exception as err:  # a benchmark reports every failure and goes on
        result.error = str(err)
    return result


async def clip_loop(
    ws_url: str, avatar_id: str, pcm: np.ndarray, args: argparse.Namespace, until: float
) -> list[Result]:
    """Clip after clip (sent at the speed of speech) until ``until``."""
    results = []
    while time.perf_counter() + pcm.size / 16000 < until:
        results.append(await clip_session(ws_url, avatar_id, pcm, args))
    return results


# ------------------------------------------------------------------------------------------ report


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(points) < 3:
        return None
    t, mb = np.array(points).T
    return float(np.polyfit(t / 60, mb, 1)[0])


def report(samples: list[Sample], soak_end_s: float, path: Path | None) -> None:
    if path is not None:
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["t_s", "phase", "active_sessions", "pid", "process", "rss_mb"])
            for s in samples:
                for (pid, label), mb in sorted(s.rss_mb.items()):
                    writer.writerow([f"{s.t_s:.1f}", s.phase, s.active_sessions, pid, label, f"{mb:.1f}"])
        print(f"wrote {path} ({len(samples)} samples)")
    processes = sorted({key for s in samples for key in s.rss_mb}, key=lambda key: (key[1] != "gateway", key[1]))
    print("\n| process | pid | start MB | at 1 min | end of soak | after short | peak | slope after 1 min (MB/min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in processes:
        series = [(s.t_s, s.rss_mb[key]) for s in samples if key in s.rss_mb]
        soak = [(t, mb) for t, mb in series if t <= soak_end_s]
        after_warmup = [(t, mb) for t, mb in soak if t >= WARMUP_S]
        at_minute = after_warmup[0][1] if after_warmup else float("nan")
        slope = slope_mb_per_min(after_warmup)
        soak_end = soak[-1][1] if soak else float("nan")
        print(
            f"| {key[1]} | {key[0]} | {series[0][1]:.0f} | {at_minute:.0f} | {soak_end:.0f} | "
            f"{series[-1][1]:.0f} | {max(mb for _, mb in series):.0f} | {'–' if slope is None else f'{slope:+.2f}'} |"
        )


async def main_async(args: argparse.Namespace) -> int:
    root = args.pid or find_gateway()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    args.seconds = max(args.burst_seconds, args.clip_seconds, args.short_seconds)  # the speech prepare() makes
    avatar_id, pcm, ws_url = await prepare(args)
    burst, clip, short = (
        pcm[: int(16000 * s) // PIECE * PIECE] for s in (args.burst_seconds, args.clip_seconds, args.short_seconds)
    )
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=30) as client:
        sampler = Sampler(root, client)
        sampling = asyncio.create_task(sampler.run(args.interval))
        try:
            until = time.perf_counter() + 60 * args.minutes
            conversations = args.sessions - args.clips
            log.info("soak: %d conversations and %d clip slots for %g min", conversations, args.clips, args.minutes)
            args.pace = "realtime"
            soaked = await asyncio.gather(
                *(conversation(ws_url, avatar_id, burst, args, until) for _ in range(conversations)),
                *(clip_loop(ws_url, avatar_id, clip, args, until) for _ in range(args.clips)),
            )
            soak_end = time.perf_counter() - sampler.started
            sampler.phase = "short"
            args.pace = "burst"
            log.info("%d short sessions, %d at a time", args.short, args.sessions)
            shorts: list[Result] = []
            for first in range(0, args.short, args.sessions):
                count = min(args.sessions, args.short - first)
                shorts += await asyncio.gather(*(clip_session(ws_url, avatar_id, short, args) for _ in range(count)))
            sampler.phase = "after"
            drained = None
            for _ in range(30):  # the sessions' slots are freed as their sockets close
                if (drained := await _active_sessions(client)) == 0:
                    break
                await asyncio.sleep(1.0)  # polling the server's gauge against a deadline
            await sampler.sample()
        finally:
            sampling.cancel()
    conversed = [r for r in soaked if isinstance(r, Conversed)]
    clips = [c for r in soaked if isinstance(r, list) for c in r]
    report(sampler.samples, soak_end, args.csv)
    errors = [r.error for r in conversed if r.error] + [r.error for r in clips + shorts if r.error]
    print(
        f"\nconversations: {len(conversed)}, {sum(r.frames for r in conversed)} frames, "
        f"{sum(r.fragments for r in conversed)} fragments, {sum(r.utterances for r in conversed)} utterances; "
        f"clips during the soak: {len(clips)}; short sessions: {len(shorts)}; errors: {len(errors)}"
        + "".join(f"\n  {e}" for e in errors[:10])
    )
    print(f"lipsync_active_sessions at the end: {drained}")
    return 0 if not errors and drained == 0 else 1


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per /metrics request
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(parser, engine="wav2lip")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--clips", type=int, default=None, help="of --sessions, how many stream clips (default half)")
    parser.add_argument("--short", type=int, default=50, help="short sessions after the soak")
    parser.add_argument("--burst-every", type=float, default=20.0, help="seconds between a conversation's utterances")
    parser.add_argument("--burst-seconds", type=float, default=3.0, help="speech per utterance")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="speech per clip during the soak")
    parser.add_argument("--short-seconds", type=float, default=2.0, help="speech per short session")
    parser.add_argument("--chunk-frames", type=int, default=8)
    parser.add_argument("--pose", choices=("still", "audio"), default="still", help="sadtalker clips only")
    parser.add_argument("--pid", type=int, default=None, help="the gateway's process (default: found by name)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--csv", type=Path, default=Path("soak.csv"), help="one row per process and sample")
    args = parse_client_arguments(parser)
    if args.clips is None:
        args.clips = args.sessions // 2
    if not 0 <= args.clips <= args.sessions:
        parser.error("--clips must be 0..--sessions")
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
