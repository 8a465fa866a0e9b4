"""The agent frameworks' adapters (lipsync.integrations), tested in their own environment (``make agents``:
Pipecat and LiveKit Agents pin other versions of shared libraries than the gateway) against the real gateway
and embedded Triton started here."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import read_wav_int16, running_gateway, wav_bytes

from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton

pytestmark = pytest.mark.triton
REPO = Path(__file__).resolve().parent.parent
AGENTS_PYTHON = REPO / ".venv-agents" / "bin" / "python"


@pytest.fixture(scope="module")
def gateway(triton_server: EmbeddedTriton, astronaut_jpeg: bytes) -> Iterator[tuple[str, str]]:
    with running_gateway(Settings(triton_url=triton_server.grpc_url, demo=True)) as url:  # type: ignore[call-arg]
        response = httpx.post(f"{url}/v1/avatars", files={"image": ("a.jpg", astronaut_jpeg)}, timeout=120)
        assert response.status_code == 200, response.text
        yield url, response.json()["avatar_id"]


@pytest.mark.parametrize("framework", ["pipecat", "livekit"])
def test_the_framework_adapters_pass_their_tests(
    framework: str, gateway: tuple[str, str], spoken_wav: Path, tmp_path: Path
) -> None:
    if not AGENTS_PYTHON.exists():
        pytest.fail(f"{AGENTS_PYTHON} is missing: `make agents` builds the agents' environment (make test does)")
    url, avatar_id = gateway
    speech = tmp_path / "sentence_16k.wav"
    speech.write_bytes(wav_bytes(read_wav_int16(spoken_wav)))
    env = os.environ | {
        "LIPSYNC_TEST_GATEWAY": url,
        "LIPSYNC_TEST_AVATAR": avatar_id,
        "LIPSYNC_TEST_SPEECH": str(speech),
    }
    command = [
        str(AGENTS_PYTHON),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        "tests/frameworks/pytest.ini",
        f"tests/frameworks/test_{framework}.py",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
