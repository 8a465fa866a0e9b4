"""`python -m gateway up --demo` (what `make demo` runs): the whole system starts, serves, and Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gateway_helpers import processes_mentioning

from gateway.ops.up import EXPORT_COMPLETE

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_demo_starts_everything_and_ctrl_c_stops_everything(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(reduced_onnx_dir, artifacts / "onnx" / "demo")  # the export step itself is tested elsewhere
    (artifacts / "onnx" / "demo" / EXPORT_COMPLETE).touch()
    repository = tmp_path / "model_repository"
    port = _free_port()
    env = {
        **os.environ,
        "LIPSYNC_ARTIFACTS_DIR": str(artifacts),
        "LIPSYNC_MODEL_REPOSITORY": str(repository),
        "LIPSYNC_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up", "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C, even when the tests run in `&`
    )
    try:
        deadline = time.monotonic() + 300
        status = 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
            except (urllib.error.URLError, ConnectionError):
                status = 0
            if status == 200:
                break
            time.sleep(0.5)  # polling a readiness endpoint against a deadline
        assert status == 200, process.stdout.read().decode() if process.poll() is not None else "not ready"
        assert json.loads(body)["status"] == "ready"
        page_status, page = _get(f"http://127.0.0.1:{port}/")
        assert page_status == 200 and "<html" in page.lower()
        assert processes_mentioning(str(repository)), "the embedded tritonserver is not running"
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    assert "DEMO" in output
    assert processes_mentioning(str(repository)) == []
