"""STUN/TURN for WebRTC across NAT: the credentials the gateway hands out work with a real coturn (Debian's)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from pydantic import ValidationError

from gateway.settings import Settings
from gateway.transport.webrtc import ice_servers

SECRET = "a-turn-secret-of-some-length"


def settings(**fields: object) -> Settings:
    return Settings(triton_url="127.0.0.1:1", **fields)  # type: ignore[arg-type]


def test_turn_credentials_follow_the_turn_rest_api_and_expire() -> None:
    servers = ice_servers(
        settings(ice_servers="stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp", turn_secret=SECRET),
        now=1_000_000,
    )
    assert servers[0] == {"urls": ["stun:stun.example.org:3478"]}
    turn = servers[1]
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    assert turn["username"] == f"{1_000_000 + 3600}:lipsync"
    expected = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    assert ice_servers(settings()) == []  # none configured: host candidates only


def test_ice_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="is not a stun:, turn: or turns: URL"):
        settings(ice_servers="http://turn.example.org")
    with pytest.raises(ValidationError, match="LIPSYNC_TURN_SECRET must have at least"):
        settings(ice_servers="turn:x:3478", turn_secret="short")
    # Compose passes unset variables through as empty strings: they mean "none".
    assert settings(ice_servers="", turn_secret="").turn_secret is None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("turnserver is missing: install Debian's coturn (apt-get install -y coturn), as .ci/run does")
    port = free_udp_port()
    process = subprocess.Popen(
        [
            binary,
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            "--min-port=49152",
            "--max-port=65535",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=lipsync.test",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            f"--log-file={tmp_path / 'turn.log'}",
            f"--pidfile={tmp_path / 'turn.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answers_stun(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def answers_stun(port: int, process: subprocess.Popen[bytes], attempts: int = 50) -> None:
    """Wait until the server answers a STUN Binding request (each attempt waits 0.2 s for the answer)."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(attempts):
            assert process.poll() is None, "turnserver exited"
            sock.sendto(bytes(request), ("127.0.0.1", port))
            try:
                if stun.parse_message(sock.recv(2048)).transaction_id == request.transaction_id:
                    return
            except TimeoutError:
                continue
    raise AssertionError(f"turnserver did not answer on port {port}")


def test_the_handed_out_credentials_allocate_a_relay_on_coturn(coturn: int) -> None:
    (turn,) = ice_servers(settings(ice_servers=f"turn:127.0.0.1:{coturn}", turn_secret=SECRET))

    async def allocate(username: str, password: str) -> tuple[str, int]:
        transport, _ = await create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", coturn), username=username, password=password
        )
        try:
            address: tuple[str, int] = transport.get_extra_info("sockname")
            return address
        finally:
            transport.close()

    relayed = asyncio.run(allocate(turn["username"], turn["credential"]))
    assert relayed[0] == "127.0.0.1" and relayed[1] > 0
    with pytest.raises(stun.TransactionFailed, match=r"401"):  # a wrong credential is refused by the server
        asyncio.run(allocate(turn["username"], base64.b64encode(b"wrong").decode()))
