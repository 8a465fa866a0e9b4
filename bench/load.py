"""N concurrent streaming sessions against a running system: time to first fragment, real-time factor, errors.

    python bench/load.py --url http://127.0.0.1:8000 --sessions 4 [--audio speech.wav] [--seconds 5]
                         [--portrait face.jpg] [--pace realtime|burst] [--chunk-frames 8] [--token T]
                         [--engine sadtalker|wav2lip]

Each session uploads the portrait (cached by the server after the first), opens ``/ws/stream``, sends 16 kHz
PCM in 40 ms pieces — at the speed of speech (``realtime``, like a microphone) or all at once (``burst``,
like a file) — then ``end``, and reads fragments until the server's ``end``. Reported per session and in
total: time to first fragment, real-time factor (seconds of video per second of wall time from start to
end), and errors. Talks only to the URL given (use a loopback address for a local system). All sessions come
from one address: start the server with LIPSYNC_MAX_SESSIONS_PER_CLIENT (default 2) at least --sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.audio_io import decode_audio

PIECE = 640  # samples per message: one video frame of audio (40 ms)


@dataclass
class Result:
    first_fragment_s: float | None = None
    video_seconds: float = 0.0
    wall_s: float = 0.0
    error: str | None = None


def _portrait(path: Path | None) -> bytes:
    if path is not None:
        return path.read_bytes()
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    return buffer.getvalue()


def _speech(path: Path | None, seconds: float) -> np.ndarray:
    if path is not None:
        wav = decode_audio(path.read_bytes())
    else:  # a voiced, syllable-like signal when no recording is given
        t = np.arange(int(16000 * seconds)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * 160 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    pcm = np.clip(np.rint(wav[: int(16000 * seconds)] * 32768), -32768, 32767)
    return pcm.astype("<i2")


async def start_session(ws: Any, avatar_id: str, options: dict[str, Any], mode: str = "clip") -> dict[str, Any]:
    """Send `start` on an open /ws/stream socket; the server's `ready`, or RuntimeError in its words."""
    await ws.send(json.dumps({"type": "start", "mode": mode, "avatar_id": avatar_id, "options": options}))
    ready: dict[str, Any] = json.loads(await ws.recv())
    if ready["type"] != "ready":
        raise RuntimeError(ready.get("message", ready))
    return ready


async def _session(ws_url: str, avatar_id: str, pcm: np.ndarray, args: argparse.Namespace) -> Result:
    result = Result()
    start = time.perf_counter()
    try:
        async with websockets.connect(ws_url, max_size=None) as ws:
            options = {"chunk_frames": args.chunk_frames, "engine": args.engine}
            if args.engine == "sadtalker":
                options["pose"] = args.pose
            await start_session(ws, avatar_id, options)

            async def send_audio() -> None:
                for offset in range(0, pcm.size, PIECE):
                    await ws.send(pcm[offset : offset + PIECE].tobytes())
                    if args.pace == "realtime":
                        await asyncio.sleep(PIECE / 16000)  # pacing like a microphone, not synchronisation
                await ws.send(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send_audio())
            binary = 0
            async for message in ws:
                if isinstance(message, bytes):
                    binary += 1
                    if binary == 2 and result.first_fragment_s is None:  # the first is the init segment
                        result.first_fragment_s = time.perf_counter() - start
                    continue
                payload = json.loads(message)
                if payload["type"] == "error":
                    raise RuntimeError(f"{payload['code']}: {payload['message']}")
                if payload["type"] == "end":
                    result.video_seconds = float(payload["duration"])
                    break
            await sender
    except Exception as err:  # a benchmark reports every failure and goes on
        result.error = str(err)
    result.wall_s = time.perf_counter() - start
    return result


def add_client_arguments(parser: argparse.ArgumentParser, engine: str) -> None:
    """The options every bench client shares: where the server is, how many sessions, what they send."""
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--sessions", type=int, default=2, help="concurrent sessions, 1..64")
    parser.add_argument("--engine", choices=("sadtalker", "wav2lip"), default=engine)
    parser.add_argument("--audio", type=Path, default=None, help="speech to send (default: a synthetic voice)")
    parser.add_argument("--portrait", type=Path, default=None, help="default: skimage's astronaut")
    parser.add_argument("--token", default=None)


def parse_client_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if not 1 <= args.sessions <= 64:
        parser.error("--sessions must be 1..64")
    return args


async def prepare(args: argparse.Namespace) -> tuple[str, np.ndarray, str]:
    """Upload the portrait; return its avatar id, the speech as 16 kHz PCM and the streaming socket's URL."""
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300) as client:
        response = await client.post("/v1/avatars", files={"image": ("p.jpg", _portrait(args.portrait), "image/jpeg")})
        response.raise_for_status()
        avatar_id = response.json()["avatar_id"]
    ws_url = args.url.replace("http", "ws", 1) + "/ws/stream" + (f"?token={args.token}" if args.token else "")
    return avatar_id, _speech(args.audio, args.seconds), ws_url


async def main_async(args: argparse.Namespace) -> int:
    avatar_id, pcm, ws_url = await prepare(args)
    started = time.perf_counter()
    results = await asyncio.gather(*(_session(ws_url, avatar_id, pcm, args) for _ in range(args.sessions)))
    total = time.perf_counter() - started
    print(f"{args.sessions} sessions × {pcm.size / 16000:.1f} s of audio, pace {args.pace}, {total:.1f} s wall\n")
    print("| session | first fragment (s) | video (s) | wall (s) | real-time factor | error |")
    print("|---:|---:|---:|---:|---:|---|")
    for i, r in enumerate(results):
        first = f"{r.first_fragment_s:.2f}" if r.first_fragment_s is not None else "–"
        rtf = r.video_seconds / r.wall_s if r.wall_s else 0.0
        print(f"| {i} | {first} | {r.video_seconds:.2f} | {r.wall_s:.1f} | {rtf:.3f} | {r.error or ''} |")
    ok = [r for r in results if r.error is None]
    if ok:
        firsts = [r.first_fragment_s for r in ok if r.first_fragment_s is not None]
        print(f"\nmedian first fragment {statistics.median(firsts):.2f} s" if firsts else "")
        print(f"aggregate real-time factor {sum(r.video_seconds for r in ok) / total:.3f} (all sessions together)")
    print(f"errors: {len(results) - len(ok)}")
    return 0 if len(ok) == len(results) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(parser, engine="sadtalker")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pace", choices=("realtime", "burst"), default="realtime")
    parser.add_argument("--pose", choices=("still", "audio"), default="still", help="sadtalker only")
    parser.add_argument("--chunk-frames", type=int, default=8)
    args = parse_client_arguments(parser)
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
