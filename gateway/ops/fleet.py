"""A fleet on one machine: N embedded Tritons, M gateways and a Redis server, all real processes on loopback.

``python -m gateway fleet --tritons 2 --gateways 2 [--demo]`` — for people without a cluster, and for the
tests of the scale-out paths (balancing, failover, shared avatars): every gateway gets every Triton in
``LIPSYNC_TRITON_URL`` and the Redis in ``LIPSYNC_REDIS_URL``. Redis is Debian's ``redis-server`` (no
persistence: avatar records are a cache). Ctrl-C stops it all.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.triton.server import EmbeddedTriton, free_loopback_ports

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class FleetError(RuntimeError):
    pass


@dataclass
class RedisServer:
    """``redis-server`` on a loopback port, without persistence."""

    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FleetError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = self.port or free_loopback_ports(1)[0]
        command = [binary, "--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis  # imported here: only a fleet needs it

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise FleetError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.1)  # polling a starting server against a deadline
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None


@dataclass
class Fleet:
    """``tritons`` embedded Tritons serving ``repository``, ``gateways`` gateway processes, one Redis."""

    repository: Path
    tritons: int = 2
    gateways: int = 2
    env: dict[str, str] = field(default_factory=dict)  # extra LIPSYNC_* settings for the gateways
    redis: RedisServer = field(default_factory=RedisServer)
    triton_servers: list[EmbeddedTriton] = field(default_factory=list)
    gateway_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway_ports: list[int] = field(default_factory=list)

    @property
    def triton_url(self) -> str:
        return ",".join(server.grpc_url for server in self.triton_servers)

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://{LOOPBACK}:{port}" for port in self.gateway_ports]

    def start(self) -> Self:
        # The gateways of this fleet sign the avatar records they share with one key (unless one is given).
        self.env.setdefault("LIPSYNC_AVATAR_SIGNING_KEY", secrets.token_hex(32))
        try:
            self.redis.start()
            for _ in range(self.tritons):
                self.triton_servers.append(EmbeddedTriton().start(self.repository, auto_complete_config=False))
            for _ in range(self.gateways):
                self._start_gateway()
        except BaseException:
            self.stop()
            raise
        log.info("fleet: gateways %s, Tritons %s, Redis %s", self.gateway_urls, self.triton_url, self.redis.url)
        return self

    def _start_gateway(self, timeout_s: float = 120.0) -> None:
        port = free_loopback_ports(1)[0]
        env = {
            **os.environ,
            **self.env,
            "LIPSYNC_TRITON_URL": self.triton_url,
            "LIPSYNC_REDIS_URL": self.redis.url,
            "LIPSYNC_HOST": LOOPBACK,
            "LIPSYNC_PORT": str(port),
        }
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        self.gateway_processes.append(process)
        self.gateway_ports.append(port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"the gateway on port {port} did not start")
            time.sleep(0.2)  # polling a starting server against a deadline

    def kill_triton(self, index: int) -> int:
        """Kill Triton ``index`` at once (as a crash would); returns its gRPC port."""
        server = self.triton_servers[index]
        port = server.ports.grpc
        os.killpg(server.pid, signal.SIGKILL)
        server.stop()
        return port

    def restart_triton(self, index: int, grpc_port: int) -> None:
        """Start Triton ``index`` again on the same gRPC port (the gateways know it by that address)."""
        self.triton_servers[index] = EmbeddedTriton().start(
            self.repository, grpc_port=grpc_port, auto_complete_config=False
        )

    def stop(self) -> None:
        for process in self.gateway_processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.gateway_processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.gateway_processes.clear()
        for server in self.triton_servers:
            server.stop()
        self.triton_servers.clear()
        self.redis.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
