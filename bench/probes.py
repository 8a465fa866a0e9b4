"""Probes against an exposed gateway (issue 18): what a hostile or broken client can make the server do.

    python bench/probes.py --url http://127.0.0.1:8000 [--token T] [--pid PID] [--speech-seconds 20]
                           [--sockets-per-client 4] [--flood 12] [--flood-side 5000] [--probes 1,2,3,4,5,6,7]
                           [--redis-url redis://127.0.0.1:PORT/0 --signing-key KEY]

Against a running gateway (``python -m gateway up --demo``; with ``LIPSYNC_AUTH_TOKEN`` set for probe 4), only
to the URL given (use a loopback address). Each probe is bounded in count and time:

1. **slow reader** — a raw-socket WebSocket (receive buffer 4 KiB set before ``connect``) uploads the astronaut,
   starts a Wav2Lip session, sends ``--speech-seconds`` of audio and ``end``, then never reads: how long until
   the server resets the connection, and whether ``lipsync_active_sessions`` goes back to 0.
2. **oversized message** — one WebSocket message of the limit + 1 bytes (``too_large``, 1009), and of twice it.
3. **compressed messages** — a client offering permessage-deflate: the extensions the server agreed to.
4. **upload before auth** — ``POST /v1/lipsync`` declaring 100 MB without the token; with it, the same
   declared size, and a chunked body over the route's limit (sending stops once the answer comes).
5. **many sockets** — as many idle WebSockets as the socket limit allows, then one more: ``socket_limit``, 4429.
6. **portrait flood** — ``--flood`` concurrent ``POST /v1/avatars`` of a ``--flood-side``² JPEG (within the
   pixel limit), each with other bytes (a new avatar, not a cache hit): how many are prepared and how many are
   refused ``busy``, with the peak memory meanwhile.
7. **Redis record bomb** — against a gateway started with ``LIPSYNC_REDIS_URL`` and
   ``LIPSYNC_AVATAR_SIGNING_KEY`` (given here as ``--redis-url`` and ``--signing-key``, or the same variables;
   a private Redis, as this writes to it): hostile records written straight into its Redis under the key of an
   avatar id it does not hold, then a ``/ws/stream`` session asked for that id — a deflate bomb signed with
   the fleet's key (truthful sizes, and sizes that lie), an oversized value, a genuine record re-signed with
   another key, one copied under another id, and one re-signed for that id with the fleet's key; and, as a
   control, a well-formed record for that id (the session must start). Per record: the answer and close code, and
   ``lipsync_shared_avatar_records_refused_total`` by reason. Without Redis settings the row says skipped.

The limits come from ``GET /v1/info`` (message, portrait, pixel and socket limits; ``--sockets-per-client``
only for a server that does not publish its socket limit). With ``--pid`` (the ``python -m gateway up``
process) the resident memory (VmRSS) of the gateway is read before and after each probe, and of
the gateway with every process below it (the embedded tritonserver and its Python-backend stubs); the flood
samples it every 0.2 s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import math
import os
import select
import socket
import struct
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import redis
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect
from websockets.uri import parse_uri

from gateway.avatars.shared import KEY_PREFIX, MAGIC, TAG_BYTES, sign

log = logging.getLogger("probes")

MB = 1e6
PIECE = 64 * 1024  # bytes per send of a streamed body


# ------------------------------------------------------------------------------------------------ memory


def _rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 for one that ended or a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


def _children(pid: int) -> list[int]:
    """The direct children of ``pid``, from /proc/PID/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found: list[int] = []
    todo = _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += _children(child)
    return found


@dataclass(frozen=True)
class Rss:
    gateway_mb: float
    total_mb: float  # the gateway and every process below it


class Memory:
    """Resident memory of the gateway process and its process tree (nothing without a pid)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def read(self) -> Rss | None:
        if self.pid is None:
            return None
        gateway = _rss_mb(self.pid)
        return Rss(gateway, gateway + sum(_rss_mb(child) for child in descendants(self.pid)))

    @contextlib.contextmanager
    def peak(self, every_s: float = 0.2) -> Iterator[list[Rss]]:
        """Sample every ``every_s`` in a thread while the block runs; yields a list whose one item, afterwards,
        is the peak of each figure."""
        result: list[Rss] = []
        stop = threading.Event()
        samples: list[Rss] = []

        def sample() -> None:
            while not stop.is_set():
                if (now := self.read()) is not None:
                    samples.append(now)
                stop.wait(every_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
            if samples:
                result.append(Rss(max(s.gateway_mb for s in samples), max(s.total_mb for s in samples)))


# ------------------------------------------------------------------------------------------------ the server


@dataclass
class Row:
    number: str
    probe: str
    sent: str
    answer: str
    seconds: float | None = None
    before: Rss | None = None
    after: Rss | None = None
    peak: Rss | None = None


class Server:
    """Where the gateway is, its token and its published limits."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(timeout=30) as client:
            self.info: dict[str, Any] = client.get(f"{self.url}/v1/info").raise_for_status().json()
        self.limits: dict[str, Any] = self.info["limits"]

    def ws_url(self, path: str = "/ws/stream") -> str:
        query = f"?token={self.token}" if self.token else ""
        return f"{self.url.replace('http', 'ws', 1)}{path}{query}"

    def samples(self, name: str) -> dict[str, float]:
        """A metric's samples on /metrics by their labels (``{reason="signature"}``; ``""`` for none)."""
        with httpx.Client(timeout=30, headers=self.headers) as client:
            text = client.get(f"{self.url}/metrics").raise_for_status().text
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                labels, value = line[len(name) :].rsplit(" ", 1)
                found[labels.strip()] = float(value)
        return found

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics (0 when it has none yet)."""
        return sum(self.samples(name).values())

    def upload(self, jpeg: bytes, timeout: float = 300) -> httpx.Response:
        with httpx.Client(timeout=timeout, headers=self.headers) as client:
            return client.post(f"{self.url}/v1/avatars", content=jpeg, headers={"Content-Type": "image/jpeg"})


def _error_code(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(response.json()["error"]["code"])
    return ""


def _portrait(side: int | None = None) -> bytes:
    """The astronaut as a JPEG, upscaled to ``side``² when given."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut())
    if side is not None:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _unique(jpeg: bytes) -> bytes:
    """The same JPEG with a random comment segment after its start marker: other bytes, so another avatar (the
    server caches avatars by their portrait's bytes), the same pixels."""
    comment = uuid.uuid4().hex.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def _speech(seconds: float) -> bytes:
    """A voiced test signal, 16 kHz int16 PCM."""
    t = np.arange(int(16000 * seconds)) / 16000
    voice = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (voice * 8000).astype("<i2").tobytes()


# ------------------------------------------------------------------------------------- 1. the slow reader


@contextlib.contextmanager
def raw_websocket(server: Server, receive_buffer: int | None = None) -> Iterator[tuple[socket.socket, ClientProtocol]]:
    """A WebSocket on a raw socket (sans-I/O protocol) that has read the handshake's answer and nothing after
    it; ``receive_buffer``: SO_RCVBUF set before ``connect``, which sets the TCP window (4096: a tiny one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    try:
        sock.connect((server.host, server.port))
        protocol = ClientProtocol(parse_uri(server.ws_url()))
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # the answer's head only, byte by byte
            byte = sock.recv(1)
            if not byte:
                raise ConnectionError("the server closed the connection during the handshake")
            head += byte
        protocol.receive_data(head)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        yield sock, protocol
    finally:
        sock.close()


def _wait_for_reset(sock: socket.socket, seconds: float) -> bool:
    """Whether the server dropped the connection within ``seconds`` (only hang-ups and errors are asked for)."""
    poller = select.poll()
    poller.register(sock, 0)
    return bool(poller.poll(seconds * 1000))


def _until(condition: Callable[[], bool], seconds: float, every_s: float = 0.25) -> float | None:
    """Seconds until ``condition()`` held (None: not within ``seconds``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if condition():
            return time.perf_counter() - started
        time.sleep(every_s)
    return None


def probe_slow_reader(server: Server, speech_seconds: float, wait_s: float) -> Row:
    response = server.upload(_portrait())
    response.raise_for_status()
    start = {"type": "start", "avatar_id": response.json()["avatar_id"], "options": {"engine": "wav2lip"}}
    pcm = _speech(speech_seconds)
    cut_before = server.metric("lipsync_clients_cut_off_total")
    sent = (
        f"Wav2Lip session (astronaut 512²), {speech_seconds:g} s of PCM ({len(pcm) / MB:.2f} MB) and `end` at once; "
        "then never reads (SO_RCVBUF 4 KiB)"
    )
    with raw_websocket(server, receive_buffer=4096) as (sock, protocol):
        protocol.send_text(json.dumps(start).encode())
        protocol.send_binary(pcm)
        protocol.send_text(b'{"type": "end"}')
        sock.sendall(b"".join(protocol.data_to_send()))
        sent_at = time.perf_counter()
        reset = _wait_for_reset(sock, wait_s)
        seconds = time.perf_counter() - sent_at
    if not reset:
        return Row("1", "slow reader", sent, f"**no reset within {wait_s:g} s**", seconds)
    freed = _until(lambda: server.metric("lipsync_active_sessions") == 0, 30)
    cut = server.metric("lipsync_clients_cut_off_total") - cut_before
    answer = f"connection reset {seconds:.1f} s after `end`; lipsync_clients_cut_off_total +{cut:g}; " + (
        f"lipsync_active_sessions 0 within {freed:.1f} s" if freed is not None else "**active sessions not 0 in 30 s**"
    )
    return Row("1", "slow reader", sent, answer, seconds)


# -------------------------------------------------------------------------------------- 2. oversized message


def _send_until_answered(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` in pieces while the server has not answered; the bytes sent (into the kernel's buffers:
    not all of them read by the server)."""
    sent = 0
    with contextlib.suppress(OSError):  # the server answered and closed while this was sending
        for offset in range(0, len(data), PIECE):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(data[offset : offset + PIECE])
            sent += min(PIECE, len(data) - offset)
    return sent


def probe_oversized(server: Server, size: int, label: str) -> Row:
    with raw_websocket(server) as (sock, protocol):
        protocol.send_binary(bytes(size))
        started = time.perf_counter()
        sent = _send_until_answered(sock, b"".join(protocol.data_to_send()))
        texts: list[str] = []
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):  # the answer, to the end of the connection (30 s at most)
                protocol.receive_data(data)
                sock.sendall(b"".join(protocol.data_to_send()))  # as any client: a close answers a close
        protocol.receive_eof()
        seconds = time.perf_counter() - started
        for event in protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                texts.append(json.loads(bytes(event.data)).get("code", "?"))
        close = protocol.close_rcvd
    said = f"error `{', '.join(texts)}`" if texts else "no error message"
    closed = f"close {close.code}" + (f" ({close.reason})" if close.reason else "") if close else "no close frame"
    answer = f"{said}, {closed}; the client had sent {sent / MB:.1f} MB of the frame when answered"
    return Row("2", "oversized message", f"one binary message of {size:,} bytes ({label})", answer, seconds)


# ------------------------------------------------------------------------------------ 3. compressed messages


def probe_deflate(server: Server) -> Row:
    started = time.perf_counter()
    with connect(server.ws_url(), compression="deflate", open_timeout=30) as ws:
        seconds = time.perf_counter() - started
        extensions = [type(extension).__name__ for extension in ws.protocol.extensions]
        header = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response is not None else None
    answer = f"handshake 101, extensions agreed: {extensions or 'none'}, Sec-WebSocket-Extensions: {header or 'absent'}"
    return Row("3", "compressed messages", "handshake offering permessage-deflate", answer, seconds)


# ------------------------------------------------------------------------------------ 4. upload before auth


@dataclass
class RawAnswer:
    status: int | None
    code: str
    seconds: float | None  # from the end of the request's head to the answer
    body_sent: int


def _raw_request(server: Server, head: str, pieces: Iterable[bytes], timeout: float = 60) -> RawAnswer:
    """Send ``head``, then ``pieces`` until the server answers (or stops taking them); read its answer."""
    sent = 0
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        started = time.perf_counter()
        answered: float | None = None
        try:
            for piece in pieces:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(piece)
                sent += len(piece)
        except OSError:  # the server answered and closed while this was sending
            pass
        answer = b""
        with contextlib.suppress(OSError):
            if select.select([sock], [], [], timeout)[0]:
                answered = time.perf_counter() - started
                while chunk := sock.recv(65536):
                    answer += chunk
    status: int | None = None
    code = ""
    if answer.startswith(b"HTTP/1."):
        status = int(answer.split(b" ", 2)[1])
        with contextlib.suppress(ValueError, KeyError, TypeError):
            code = str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"])
    return RawAnswer(status, code, answered, sent)


def _zeros(total: int, chunked: bool) -> Iterator[bytes]:
    piece = bytes(PIECE)
    for _ in range(math.ceil(total / PIECE)):
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece


def _row_of(number: str, probe: str, sent: str, answer: RawAnswer) -> Row:
    said = f"HTTP {answer.status} `{answer.code}`" if answer.status is not None else "**no answer**"
    if answer.body_sent:
        said += f", when the client had sent {answer.body_sent / MB:.1f} MB of body"
    return Row(number, probe, sent, said, answer.seconds)


def upload_probes(server: Server) -> list[tuple[str, str, Callable[[], Row]]]:
    """Probe 4's three requests (number, name, run), or none when the server has no token."""
    limits = server.limits
    route_limit = limits["max_portrait_bytes"] + limits["max_message_bytes"] + 64 * 1024  # docs/protocol.md
    form = "--b\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\nContent-Type: image/jpeg\r\n\r\n"
    declared = 100_000_000
    base = f"POST /v1/lipsync HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
    multipart = "Content-Type: multipart/form-data; boundary=b\r\n"
    auth = f"Authorization: Bearer {server.token}\r\n"
    over = 8 * 2**20  # how far past the limit a streamed body may go before the probe gives up
    specs = (
        (
            "4a",
            "upload before auth",
            f"{base}{multipart}Content-Length: {declared}\r\n\r\n{form}",
            lambda: iter(()),
            "`POST /v1/lipsync`, multipart, Content-Length 100 MB, **no token**: the head and the form's first line",
        ),
        (
            "4b",
            "declared too large",
            f"{base}{auth}{multipart}Content-Length: {declared}\r\n\r\n{form}",
            lambda: iter(()),
            f"the same with the token (route limit {route_limit:,} bytes)",
        ),
        (
            "4c",
            "streamed too large",
            f"{base}{auth}{multipart}Transfer-Encoding: chunked\r\n\r\n{len(form):x}\r\n{form}\r\n",
            lambda: _zeros(route_limit + over, chunked=True),
            f"with the token, chunked (no length), {PIECE // 1024} KiB chunks until refused (at most limit + 8 MiB)",
        ),
    )

    def run(number: str, probe: str, head: str, pieces: Callable[[], Iterator[bytes]], sent: str) -> Row:
        return _row_of(number, probe, sent, _raw_request(server, head, pieces()))

    return [(spec[0], spec[1], functools.partial(run, *spec)) for spec in specs]


# ------------------------------------------------------------------------------------------ 5. many sockets


def probe_sockets(server: Server, per_client: int) -> Row:
    sent = f"{per_client} idle WebSockets to /ws/stream, then one more"
    with contextlib.ExitStack() as stack:
        for _ in range(per_client):
            stack.enter_context(connect(server.ws_url(), compression=None, open_timeout=30))
        started = time.perf_counter()
        extra = stack.enter_context(connect(server.ws_url(), compression=None, open_timeout=30))
        texts: list[str] = []
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                message = extra.recv(timeout=30)
                if isinstance(message, str):
                    texts.append(json.loads(message).get("code", message))
        seconds = time.perf_counter() - started
        code = extra.protocol.close_rcvd.code if extra.protocol.close_rcvd is not None else None
    said = f"error `{', '.join(texts)}`" if texts else "no error message"
    return Row("5", "many sockets, one client", sent, f"the extra one: {said}, close {code}", seconds)


# ----------------------------------------------------------------------------------------- 6. portrait flood


def probe_flood(server: Server, memory: Memory, count: int, side: int) -> Row:
    side = min(side, math.isqrt(int(server.limits["max_portrait_pixels"])))
    jpeg = _portrait(side)
    barrier = threading.Barrier(count)

    def one() -> tuple[int, str, float]:  # each upload a portrait the server has not seen
        barrier.wait()
        started = time.perf_counter()
        try:
            response = server.upload(_unique(jpeg), timeout=600)
            return response.status_code, _error_code(response), time.perf_counter() - started
        except httpx.HTTPError as err:
            return 0, type(err).__name__, time.perf_counter() - started

    before = memory.read()
    started = time.perf_counter()
    with memory.peak() as peak, ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: one(), range(count)))
    seconds = time.perf_counter() - started
    statuses: dict[str, list[float]] = {}
    for status, code, took in results:
        statuses.setdefault(f"{status}{f' `{code}`' if code else ''}", []).append(took)
    answer = "; ".join(
        f"{len(times)} × {key} ({min(times):.1f}–{max(times):.1f} s)" for key, times in sorted(statuses.items())
    )
    sent = f"{count} concurrent `POST /v1/avatars`, {side}×{side} JPEG ({len(jpeg) / MB:.1f} MB), each another avatar"
    return Row("6", "portrait flood", sent, answer, seconds, before, memory.read(), peak[0] if peak else None)


# ------------------------------------------------------------------------------------- 7. Redis records

REFUSED = "lipsync_shared_avatar_records_refused_total"
MiB = 2**20


def _deflate_bomb(inflated: int, lie: bool) -> bytes:
    """A zip (a record's container) of one ``.npy`` member of ``inflated`` zero bytes, which deflate to a few
    hundred KB; ``lie``: its headers say the member holds 1,000 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (inflated,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("landmarks.npy", "w") as member:
        member.write(header.getvalue())
        block = bytes(MiB)
        for _ in range(inflated // MiB):
            member.write(block)
    data = bytearray(buffer.getvalue())
    if lie:
        # One member, no comment: the local header is at 0, and the end record's last fields give where the
        # central directory starts. The uncompressed size is at 22 in the one and 24 in the other.
        directory = struct.unpack("<I", data[-6:-2])[0]
        for at in (22, directory + 24):
            data[at : at + 4] = struct.pack("<I", 1000)
    return bytes(data)


def _relabelled(payload: bytes, avatar_id: str) -> bytes:
    """A genuine record's contents with ``avatar_id`` written in as its id (a record the gateway should take)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as record:
        arrays = {name: record[name] for name in record.files}
    meta = json.loads(str(arrays["meta"]))
    meta["id"] = avatar_id
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _fresh_id() -> str:
    """An avatar id no gateway holds (the shape of a real one: 64 hex digits)."""
    return uuid.uuid4().hex + uuid.uuid4().hex


def _ask_for(server: Server, avatar_id: str) -> tuple[str, float]:
    """Start a ``/ws/stream`` session with ``avatar_id``: what the server said (and its close code), and the
    seconds from the ``start`` message to the close."""
    said: list[str] = []
    with connect(server.ws_url(), compression=None, open_timeout=30) as ws:
        started = time.perf_counter()
        ws.send(json.dumps({"type": "start", "avatar_id": avatar_id, "options": {"engine": "wav2lip"}}))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                message = ws.recv(timeout=60)
                if not isinstance(message, str):
                    continue
                body = json.loads(message)
                if body.get("type") != "error":  # the record was taken: the session started
                    said.append(f"`{body.get('type')}`: the session started")
                    break
                words = str(body.get("message")).replace(avatar_id, avatar_id[:8] + "…")  # the table stays narrow
                said.append(f"error `{body.get('code')}` ({words})")
        seconds = time.perf_counter() - started
        close = ws.protocol.close_rcvd
    closed = f"close {close.code}" if close is not None else "closed by the probe"
    return f"{'; '.join(said) or 'no message'}, {closed}", seconds


class RedisProbe:
    """Hostile records written into the gateway's Redis (``store``), each under a fresh id, then asked for."""

    def __init__(self, server: Server, memory: Memory, url: str, signing_key: str) -> None:
        self.server = server
        self.memory = memory
        self.store = redis.Redis.from_url(url, socket_timeout=30)
        self.key = signing_key.encode()
        self._genuine: tuple[str, bytes] | None = None

    def close(self) -> None:
        self.store.close()

    def genuine(self) -> tuple[str, bytes]:
        """A record the gateway wrote itself: a new avatar of the astronaut (other bytes), uploaded; its id."""
        if self._genuine is None:
            response = self.server.upload(_unique(_portrait()))
            response.raise_for_status()
            avatar_id = response.json()["avatar_id"]
            record = self.store.get(KEY_PREFIX + avatar_id)
            if not isinstance(record, bytes):
                raise RuntimeError("the gateway did not write the uploaded avatar's record to this Redis")
            self._genuine = avatar_id, record
        return self._genuine

    def run(self, number: str, probe: str, sent: str, record: Callable[[str], bytes]) -> Row:
        """Store ``record(avatar_id)`` under a fresh id, ask for that id; the answer, and the refusals counted."""
        avatar_id = _fresh_id()
        data = record(avatar_id)
        self.store.set(KEY_PREFIX + avatar_id, data)
        refused = self.server.samples(REFUSED)
        before = self.memory.read()
        try:
            with self.memory.peak() as peak:
                answer, seconds = _ask_for(self.server, avatar_id)
        finally:
            self.store.delete(KEY_PREFIX + avatar_id)
        counted = {
            labels: value - refused.get(labels, 0.0)
            for labels, value in self.server.samples(REFUSED).items()
            if value != refused.get(labels, 0.0)
        }
        answer += "; " + (
            ", ".join(f"`{REFUSED}{labels}` +{delta:g}" for labels, delta in counted.items())
            or f"`{REFUSED}` unchanged"
        )
        sent = f"{sent} ({len(data) / MB:.2f} MB in Redis)"
        return Row(number, probe, sent, answer, seconds, before, self.memory.read(), peak[0] if peak else None)

    def probes(self) -> list[tuple[str, str, Callable[[], Row]]]:
        """Probe 7's records (number, name, run)."""
        wrong_key = os.urandom(32)

        def payload() -> bytes:  # the genuine record without its signature
            return self.genuine()[1][len(MAGIC) + TAG_BYTES :]

        specs: list[tuple[str, str, str, Callable[[str], bytes]]] = [
            (
                "7a",
                "Redis: deflate bomb",
                "a zip inflating to 256 MiB (its sizes true), signed with the fleet's key",
                lambda avatar_id: sign(self.key, avatar_id, _deflate_bomb(256 * MiB, lie=False)),
            ),
            (
                "7b",
                "Redis: deflate bomb, lying sizes",
                "the same zip, its headers saying 1,000 bytes, signed with the fleet's key",
                lambda avatar_id: sign(self.key, avatar_id, _deflate_bomb(256 * MiB, lie=True)),
            ),
            ("7c", "Redis: oversized value", "128 MiB of zeros", lambda _: bytes(128 * MiB)),
            (
                "7d",
                "Redis: wrong key",
                "a genuine record's contents, signed for this id with another key",
                lambda avatar_id: sign(wrong_key, avatar_id, payload()),
            ),
            (
                "7e",
                "Redis: another avatar's record",
                "a genuine record (signed by the gateway for its own avatar) copied under this id",
                lambda _: self.genuine()[1],
            ),
            (
                "7f",
                "Redis: another avatar's record, re-signed",
                "a genuine record's contents (another avatar's) signed for this id with the fleet's key",
                lambda avatar_id: sign(self.key, avatar_id, payload()),
            ),
            (  # the control: the same path takes a well-formed record, so the refusals above are the records'
                "7g",
                "Redis: control",
                "a genuine record's contents with this id written in, signed with the fleet's key",
                lambda avatar_id: sign(self.key, avatar_id, _relabelled(payload(), avatar_id)),
            ),
        ]
        return [(spec[0], spec[1], functools.partial(self.run, *spec)) for spec in specs]


# ------------------------------------------------------------------------------------------------- report


def _rss_cell(row: Row, total: bool) -> str:
    if row.before is None or row.after is None:
        return "–"

    def pick(rss: Rss) -> float:
        return rss.total_mb if total else rss.gateway_mb

    cell = f"{pick(row.before):.0f} → {pick(row.after):.0f}"
    return cell + (f" (peak {pick(row.peak):.0f})" if row.peak is not None else "")


def table(rows: list[Row]) -> str:
    lines = [
        "| # | probe | sent | answer | time (s) | gateway RSS before → after (MB) | with Triton and stubs (MB) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        seconds = f"{row.seconds:.2f}" if row.seconds is not None else "–"
        lines.append(
            f"| {row.number} | {row.probe} | {row.sent} | {row.answer} | {seconds} | "
            f"{_rss_cell(row, total=False)} | {_rss_cell(row, total=True)} |"
        )
    return "\n".join(lines)


def _measured(number: str, probe: str, memory: Memory, run: Callable[[], Row]) -> Row:
    """Run one probe with the memory before and after; a probe that fails becomes a row saying how."""
    log.info("probe %s: %s", number, probe)
    before = memory.read()
    try:
        row = run()
    except Exception as err:  # a failed probe is a result: the others still run
        log.exception("probe %s failed", number)
        row = Row(number, probe, "–", f"**probe failed: {type(err).__name__}: {err}**")
    row.before = row.before or before
    row.after = row.after or memory.read()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=None, help="the server's LIPSYNC_AUTH_TOKEN")
    parser.add_argument("--pid", type=int, default=None, help="the gateway process, for its memory")
    parser.add_argument("--speech-seconds", type=float, default=20.0, help="audio the slow reader sends")
    parser.add_argument("--reset-wait", type=float, default=180.0, help="how long to wait for the reset, s")
    parser.add_argument(
        "--sockets-per-client", type=int, default=4, help="LIPSYNC_MAX_SOCKETS_… where /v1/info does not say it"
    )
    parser.add_argument("--flood", type=int, default=12, help="concurrent portrait uploads, 1..32")
    parser.add_argument("--flood-side", type=int, default=5000, help="their side in pixels (within the limit)")
    parser.add_argument("--probes", default="1,2,3,4,5,6,7", help="which probes, comma-separated")
    parser.add_argument(
        "--redis-url", default=os.environ.get("LIPSYNC_REDIS_URL"), help="the gateway's Redis (probe 7; a private one)"
    )
    parser.add_argument(
        "--signing-key", default=os.environ.get("LIPSYNC_AVATAR_SIGNING_KEY"), help="the gateway's avatar signing key"
    )
    args = parser.parse_args()
    if not 1 <= args.flood <= 32 or not 1 <= args.sockets_per_client <= 64:
        parser.error("--flood must be 1..32 and --sockets-per-client 1..64")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = Server(args.url, args.token)
    if server.info.get("auth_required") and not args.token:
        parser.error("the server requires a token: pass --token")
    per_client = int(server.limits.get("max_sockets_per_client", args.sockets_per_client))
    memory = Memory(args.pid)
    limit = int(server.limits["max_message_bytes"])
    chosen = {part.strip() for part in args.probes.split(",")}
    rows: list[Row] = []
    if "1" in chosen:
        rows.append(
            _measured(
                "1", "slow reader", memory, lambda: probe_slow_reader(server, args.speech_seconds, args.reset_wait)
            )
        )
    if "2" in chosen:
        for size, label in ((limit + 1, "limit + 1"), (2 * limit, "2 × limit")):
            rows.append(
                _measured("2", "oversized message", memory, functools.partial(probe_oversized, server, size, label))
            )
    if "3" in chosen:
        rows.append(_measured("3", "compressed messages", memory, lambda: probe_deflate(server)))
    if "4" in chosen and server.info.get("auth_required"):
        rows += [_measured(number, probe, memory, run) for number, probe, run in upload_probes(server)]
    elif "4" in chosen:
        rows.append(Row("4", "upload before auth", "–", "skipped: server has no token"))
    if "5" in chosen:
        rows.append(_measured("5", "many sockets", memory, lambda: probe_sockets(server, per_client)))
    if "6" in chosen:
        rows.append(
            _measured("6", "portrait flood", memory, lambda: probe_flood(server, memory, args.flood, args.flood_side))
        )
    if "7" in chosen and args.redis_url and args.signing_key:
        records = RedisProbe(server, memory, args.redis_url, args.signing_key)
        try:
            rows += [_measured(number, probe, memory, run) for number, probe, run in records.probes()]
        finally:
            records.close()
    elif "7" in chosen:
        rows.append(Row("7", "Redis record bomb", "–", "skipped: pass --redis-url and --signing-key (the gateway's)"))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Probes against {server.url} ({when}); limits from /v1/info: {json.dumps(server.limits)}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
