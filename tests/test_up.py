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
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway_helpers import processes_mentioning
from pydantic import ValidationError

from export.__main__ import default_stages, optional_weights_here
from export.stages import Variant
from gateway.ops import up
from gateway.ops.up import EXPORT_COMPLETE, prepare_repository
from gateway.settings import Settings


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


@pytest.mark.triton
@pytest.mark.slow
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


# The bring-up's steps, as the commands it runs (each a `python -m export` subprocess, recorded here instead).


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        ran.append(command[3:])  # after `python -m export`
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(up.subprocess, "run", run)
    return ran


@pytest.fixture
def exported(tmp_path: Path) -> Callable[..., Settings]:
    """Settings whose export step is done (its graphs there), read from the environment as `make up` reads it."""

    def make(*graphs: str) -> Settings:
        settings = Settings(demo=True, artifacts_dir=tmp_path / "artifacts", model_repository=tmp_path / "repo")
        onnx = up._onnx_dir(settings)
        onnx.mkdir(parents=True, exist_ok=True)
        (onnx / EXPORT_COMPLETE).touch()
        for graph in graphs:
            (onnx / f"{graph}.onnx").touch()
        return settings

    return make


def _step(commands: list[list[str]], name: str) -> list[str]:
    return next(command for command in commands if command[0] == name)


@pytest.mark.parametrize(
    ("variable", "value"), [("LIPSYNC_INT8_MODELS", "wav2lip"), ("LIPSYNC_WAV2LIP_INT8", "true")], ids=["new", "old"]
)
def test_int8_models_are_quantized_and_served(
    variable: str,
    value: str,
    commands: list[list[str]],
    exported: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(variable, value)
    settings = exported("wav2lip")
    assert settings.int8_models == ["wav2lip"]
    assert ("deprecated" in caplog.text) == (value == "true")  # the yes/no form says to name the models
    assert prepare_repository(settings) is not None
    quantize = _step(commands, "quantize")
    assert quantize[quantize.index("--stages") + 1] == "wav2lip" and "--if-stale" in quantize
    repository = _step(commands, "repository")
    assert repository[repository.index("--int8") + 1] == "wav2lip"


def test_no_int8_models_no_quantization(commands: list[list[str]], exported: Callable[..., Settings]) -> None:
    assert prepare_repository(exported("wav2lip")) is not None
    assert [command[0] for command in commands] == ["repository"]
    assert "--int8" not in commands[0]


def test_an_int8_model_without_its_graph_is_refused_before_any_step(
    commands: list[list[str]], exported: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIPSYNC_INT8_MODELS", "wav2lip")
    assert prepare_repository(exported()) is None
    assert commands == []


@pytest.mark.parametrize("value", ["generator", "wav2lip,render"])
def test_a_model_without_an_int8_form_is_refused_in_words(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_INT8_MODELS", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    unknown = value.split(",")[-1]
    assert f"{unknown} cannot be served from an int8 graph: the models that can are wav2lip" in str(refused.value)


def test_the_old_size_variable_still_picks_the_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIPSYNC_SIZE", "512")
    settings = Settings(artifacts_dir=tmp_path)
    assert settings.render_size == 512 and up._onnx_dir(settings).name == "official-512"


def test_official_only_when_every_sidecar_says_so(exported: Callable[..., Settings]) -> None:
    onnx = up._onnx_dir(exported())
    assert not up._exported_from_official_weights(exported())  # nothing recorded: not official
    (onnx / "a.json").write_text(json.dumps({"weights": "official checkpoints in /x"}))
    (onnx / "a.int8.json").write_text(json.dumps({"weights": "official checkpoints in /x", "source_sha256": "0"}))
    assert up._exported_from_official_weights(exported())
    (onnx / "b.json").write_text(json.dumps({"weights": "SYNTHETIC official-layout checkpoints in /x"}))
    assert not up._exported_from_official_weights(exported())


def test_the_export_adds_optional_stages_only_when_their_weights_are_there(tmp_path: Path) -> None:
    assert optional_weights_here(Variant(None), "gfpgan")  # the reduced architecture: random weights for all
    assert not optional_weights_here(Variant(tmp_path), "gfpgan")
    (tmp_path / "GFPGANv1.4.pth").touch()
    assert optional_weights_here(Variant(tmp_path), "gfpgan")
    assert "gfpgan" in default_stages(Variant(tmp_path), with_optional=["gfpgan"])
