"""The command lines a user runs first: `python -m export check|synthetic` and `python -m gateway up`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from export.official import OFFICIAL_FILES, REQUIRED_FOR_SIZE


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, timeout=300)


def test_check_without_weights_fails_and_says_where_to_get_them(tmp_path: Path) -> None:
    result = _run("-m", "export", "check", "--checkpoints", str(tmp_path))
    assert result.returncode == 1
    for name in REQUIRED_FOR_SIZE[256]:
        assert name in result.stderr
        assert OFFICIAL_FILES[name].url in result.stderr
    assert "make demo" in result.stderr


def test_check_passes_when_the_files_are_there(tmp_path: Path) -> None:
    for name in REQUIRED_FOR_SIZE[256]:
        (tmp_path / name).write_bytes(b"x")
    assert _run("-m", "export", "check", "--checkpoints", str(tmp_path)).returncode == 0


def test_up_without_weights_tries_the_download_then_stops_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a loopback port with no listener stands in for an unreachable network
        sock.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("LIPSYNC_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", mirror)
    result = _run("-m", "gateway", "up")
    assert result.returncode == 1
    assert f"cannot reach {mirror}/SadTalker_V0.0.2_256.safetensors" in result.stderr
    assert "Official weights are missing" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-downloaded is left in place


def test_up_labels_models_not_exported_from_official_weights(tmp_path: Path) -> None:
    import json

    from gateway.settings import Settings
    from gateway.up import _exported_from_official_weights, _onnx_dir

    settings = Settings(artifacts_dir=tmp_path)  # type: ignore[call-arg]
    sidecar = _onnx_dir(settings) / "generator.json"
    sidecar.parent.mkdir(parents=True)
    for weights, official in [
        ("SYNTHETIC official-layout checkpoints in /x - not the official weights", False),
        ("RANDOM (reduced architecture, seed 0) - not a result of the models", False),
        ("official checkpoints in /x", True),
    ]:
        sidecar.write_text(json.dumps({"weights": weights}))
        assert _exported_from_official_weights(settings) is official
