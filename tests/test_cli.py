"""The command lines a user runs first: `python -m export check|synthetic` and `python -m gateway up`."""

from __future__ import annotations

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


def test_up_without_weights_stops_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_CHECKPOINT_DIR", str(tmp_path))
    result = _run("-m", "gateway", "up")
    assert result.returncode == 1
    assert "Official weights are missing" in result.stderr


def test_demo_is_labelled_and_refuses_to_start_a_half_system() -> None:
    # Until the gateway lands (issue 6) the bring-up must name the missing parts and exit non-zero.
    result = _run("-m", "gateway", "up", "--demo")
    assert "DEMO MODE" in result.stderr
    assert result.returncode == 1
    assert "gateway.app does not exist yet" in result.stderr
