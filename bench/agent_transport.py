"""How the avatar's frames reach a client, measured: what each way costs per session in CPU and bandwidth.

    python bench/agent_transport.py encode [--seconds 4]
    python bench/agent_transport.py receive --url http://127.0.0.1:8000 [--seconds 4] [--engine wav2lip]

``encode`` (no server): the gateway's WebRTC encoders (aiortc's H.264 and VP8, at their default bitrates) on
512² frames of the astronaut portrait with a moving mouth region — CPU ms per frame, and what that makes per
session at 25 frames/s (the gateway pays this once per WebRTC session, on top of paste-back).

``receive`` (a running gateway, e.g. ``make demo``): one conversation session speaking ``--seconds`` of a
voiced test signal, received (a) over ``/ws/stream`` as fMP4 and decoded with PyAV by ``lipsync.agent``
(what the Pipecat and LiveKit adapters do), (b) over WebRTC by an aiortc peer (H.264 decoded by aiortc);
for each, the client's CPU per frame (process time) and the bytes received per second. Raw RGB frames, the
third option for server-to-server use, are computed: width × height × 3 × 25 bytes a second.

Each figure says the CPU it was taken on (bench/machine.py).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_class

FPS = 25


def portrait_frames(count: int, size: int = 512) -> list[av.VideoFrame]:
    """The astronaut at ``size``², its lower face changing every frame (as a talking mouth does)."""
    from PIL import Image
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))
    rng = np.random.default_rng(0)
    frames = []
    for index in range(count):
        image = base.copy()
        patch = image[300:380, 200:320].astype(np.int16) + rng.integers(-40, 40, size=(80, 120, 3))
        image[300:380, 200:320] = np.clip(patch, 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = index * 3600, fractions.Fraction(1, 90_000)
        frames.append(frame)
    return frames


def encode(seconds: float) -> None:
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    frames = portrait_frames(int(seconds * FPS))
    print(f"CPU: {cpu_class()}")
    for mime in ("video/H264", "video/VP8"):
        encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90_000, payloadType=96))
        sent = 0
        started = time.process_time()
        for index, frame in enumerate(frames):
            payloads, _ = encoder.encode(frame, force_keyframe=index == 0)
            sent += sum(map(len, payloads))
        cpu_ms = 1e3 * (time.process_time() - started) / len(frames)
        print(
            f"{mime:11s} 512²: {cpu_ms:5.1f} ms CPU/frame = {cpu_ms * FPS / 10:4.1f}% of a core per session, "
            f"{8 * sent / seconds / 1e3:6.0f} kbit/s"
        )


def voiced_signal(seconds: float) -> np.ndarray:
    """A voiced test signal (harmonics of 140 Hz, syllable-rate envelope), int16 at 16 kHz."""
    t = np.arange(int(seconds * 16_000)) / 16_000
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.25 * 32767 * tone / 2.6 * envelope).astype(np.int16)


async def over_websocket(url: str, avatar_id: str, pcm: np.ndarray, engine: str) -> dict[str, float]:
    from lipsync.agent import AvatarSession

    frames = 0
    cpu, wall = time.process_time(), time.perf_counter()
    async with AvatarSession.connect(url.replace("http", "ws", 1), avatar_id, options={"engine": engine}) as avatar:
        await avatar.speak(pcm)
        await avatar.end()
        async for _ in avatar.frames():
            frames += 1
        received = avatar.bytes_received
    return summary(frames, time.process_time() - cpu, time.perf_counter() - wall, received)


async def over_webrtc(url: str, avatar_id: str, pcm: np.ndarray, engine: str) -> dict[str, float]:
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection()
    channel = pc.createDataChannel("control")
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    opened, ended = asyncio.Event(), asyncio.Event()
    channel.on("open", opened.set)
    frames = 0

    @channel.on("message")
    def on_message(message: str) -> None:
        if json.loads(message).get("type") in ("end", "error"):
            ended.set()

    async def drain(track: object) -> None:
        nonlocal frames
        while True:
            try:
                await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            if getattr(track, "kind", "") == "video":
                frames += 1

    readers: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: readers.append(asyncio.ensure_future(drain(track))))
    cpu, wall = time.process_time(), time.perf_counter()
    await pc.setLocalDescription(await pc.createOffer())
    start = {"avatar_id": avatar_id, "mode": "conversation", "options": {"engine": engine}}
    async with httpx.AsyncClient(timeout=60) as client:
        answer = (
            await client.post(
                f"{url}/v1/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "start": start}
            )
        ).json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await opened.wait()
    for piece in range(0, pcm.size, 16_000):
        channel.send(pcm[piece : piece + 16_000].tobytes())
    channel.send(json.dumps({"type": "end"}))
    await ended.wait()
    stats = await pc.getStats()
    # aiortc counts bytes per transport (one: everything is bundled), not per RTP stream.
    received = sum(int(getattr(s, "bytesReceived", 0)) for s in stats.values() if s.type == "transport")
    elapsed_cpu, elapsed = time.process_time() - cpu, time.perf_counter() - wall
    await pc.close()
    for reader in readers:
        reader.cancel()
    return summary(frames, elapsed_cpu, elapsed, received)


def summary(frames: int, cpu_s: float, wall_s: float, received: int) -> dict[str, float]:
    return {
        "frames": frames,
        "cpu_ms_per_frame": round(1e3 * cpu_s / max(frames, 1), 2),
        "core_share_per_session": round(cpu_s / wall_s, 3),
        "kbit_s": round(8 * received / wall_s / 1e3, 1),
    }


async def receive(url: str, seconds: float, engine: str) -> dict[str, object]:
    from PIL import Image
    from skimage import data

    from lipsync.agent import upload_avatar

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=92)
    avatar = await upload_avatar(url, buffer.getvalue())
    size = avatar["framings"]["portrait"]
    pcm = voiced_signal(seconds)
    return {
        "cpu": cpu_class(),
        "video": f"{size['width']}x{size['height']} at {FPS} fps",
        "websocket_fmp4_pyav": await over_websocket(url, avatar["avatar_id"], pcm, engine),
        "webrtc_aiortc": await over_webrtc(url, avatar["avatar_id"], pcm, engine),
        "raw_rgb_kbit_s": round(8 * size["width"] * size["height"] * 3 * FPS / 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("--seconds", type=float, default=4.0)
    rec = sub.add_parser("receive")
    rec.add_argument("--url", default="http://127.0.0.1:8000")
    rec.add_argument("--seconds", type=float, default=4.0)
    rec.add_argument("--engine", default="wav2lip")
    args = parser.parse_args()
    if args.what == "encode":
        encode(args.seconds)
    else:
        print(json.dumps(asyncio.run(receive(args.url, args.seconds, args.engine)), indent=2))


if __name__ == "__main__":
    main()
