"""Helpers for the gateway tests: reading WAV files, driving /ws/stream, demuxing what came back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
import urllib.request
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.session.core import StreamSession
from gateway.settings import Settings
from gateway.transport.http_server import bind, make_server


def read_wav_int16(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if rate != 16000:  # espeak-ng speaks at 22050 Hz: resample to the native rate for exact comparisons
        from lipsync.audio_io import decode_audio

        return np.clip(np.rint(decode_audio(path.read_bytes()) * 32768), -32768, 32767).astype(np.int16)
    return pcm


def wav_bytes(pcm: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


@dataclass
class StreamResult:
    ready: dict[str, Any]
    init: bytes
    fragments: list[bytes] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None

    @property
    def mp4(self) -> bytes:
        return self.init + b"".join(self.fragments)


def stream(client: TestClient, avatar_id: str, pcm: np.ndarray, *, piece: int = 3200, **options: Any) -> StreamResult:
    """A whole /ws/stream session: start, PCM in pieces, end; everything the server sent back."""
    with client.websocket_connect("/ws/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "avatar_id": avatar_id, "options": options}))
        ready = ws.receive_json()
        assert ready["type"] == "ready", ready
        init = ws.receive_bytes()
        for start in range(0, pcm.size, piece):
            ws.send_bytes(pcm[start : start + piece].astype("<i2").tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        result = StreamResult(ready, init)
        while True:
            message = ws.receive()
            if message.get("bytes") is not None:
                result.fragments.append(message["bytes"])
                continue
            payload = json.loads(message["text"])
            if payload["type"] == "stats":
                result.stats.append(payload)
            elif payload["type"] == "end":
                result.end = payload
                return result
            else:
                raise AssertionError(f"unexpected message {payload}")


async def run_fed_in_pieces(session: StreamSession, pcm: np.ndarray, piece: int = 2731) -> None:
    """Run ``session`` to its end with int16 ``pcm`` fed in pieces, as a socket would bring it (messages and
    fragments are dropped: callers look at what the session observed or sank)."""

    async def discard(item: object) -> None:
        pass

    running = asyncio.create_task(session.run(discard))
    for start in range(0, pcm.size, piece):
        session.feed(pcm[start : start + piece].astype(np.float32) / 32768.0)
        await asyncio.sleep(0)  # let the session schedule work between pieces
    session.end()
    await running


def decode_video(mp4: bytes) -> tuple[list[np.ndarray], list[bool], list[int], float]:
    """RGB frames, keyframe flags and pts of the video stream, and the audio duration in seconds."""
    frames, keyframes, pts = [], [], []
    with av.open(io.BytesIO(mp4)) as container:
        for packet in container.demux(video=0):
            if packet.size == 0:
                continue
            keyframes.append(bool(packet.is_keyframe))
            pts.append(int(packet.pts))
            frames.extend(f.to_ndarray(format="rgb24") for f in packet.decode())
    with av.open(io.BytesIO(mp4)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    return frames, keyframes, pts, samples / rate


@contextlib.contextmanager
def running_gateway(settings: Settings, *, send_buffer: int | None = None) -> Iterator[str]:
    """The real gateway (create_app behind the configured uvicorn) on a free loopback port; yields its URL.

    ``send_buffer``: the kernel's send buffer of each connection, in bytes (instead of Linux's autotuning, which
    can take megabytes before a client that does not read holds anything up)."""
    listener = bind("127.0.0.1", 0)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
    listener.listen(64)  # bound before uvicorn starts: early connections wait in the backlog, no polling
    server = make_server(create_app(settings), settings, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="gateway", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=120) as response:
            assert response.status == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (our tmp repository paths are unique)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


class ManualClock:
    """A clock the test moves (``advance``); sessions sleeping on it wake when their time has come.

    Use it from the event loop the session runs in.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when, future))
        await future

    def advance(self, seconds: float) -> None:
        self._now += seconds
        due = [(when, future) for when, future in self._sleepers if when <= self._now]
        self._sleepers = [(when, future) for when, future in self._sleepers if when > self._now]
        for _, future in due:
            if not future.done():
                future.set_result(None)
