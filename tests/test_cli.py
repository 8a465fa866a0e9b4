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


def test_a_busy_port_stops_up_at_once_without_touching_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, artifacts = tmp_path / "model_repository", tmp_path / "artifacts"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        monkeypatch.setenv("LIPSYNC_PORT", str(busy.getsockname()[1]))
        monkeypatch.setenv("LIPSYNC_MODEL_REPOSITORY", str(repository))
        monkeypatch.setenv("LIPSYNC_ARTIFACTS_DIR", str(artifacts))
        result = _run("-m", "gateway", "up", "--demo")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "already in use" in errors[0], result.stderr
    assert not repository.exists() and not artifacts.exists()  # no export, no repository, no Triton


def test_a_bad_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_PORT", "notanumber")
    result = _run("-m", "gateway", "up", "--demo")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LIPSYNC_PORT='notanumber'" in lines[0] and "integer" in lines[0], result.stderr


def test_help_lists_the_settings_in_user_terms() -> None:
    from gateway.settings import Settings

    up_help = _run("-m", "gateway", "up", "--help")
    assert up_help.returncode == 0
    for name in Settings.model_fields:
        assert f"LIPSYNC_{name.upper()}" in up_help.stdout
    top = _run("-m", "gateway", "--help").stdout
    assert "not landed" not in top and "LIPSYNC_" in top


def test_install_can_take_pytorchs_cpu_build() -> None:
    repo = Path(__file__).resolve().parent.parent
    dry = subprocess.run(
        ["make", "-n", "-B", "install", "TORCH=cpu"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dry
    plain = subprocess.run(["make", "-n", "-B", "install"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "download.pytorch.org" not in plain and "/opt/wheels" not in plain
