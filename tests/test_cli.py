"""The command lines a user runs first: `python -m export check|download|onnx` and `python -m gateway up`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    result = _run("-m", "export", "check", "--checkpoints", str(tmp_path))
    assert result.returncode == 0
    # One-byte stand-ins are not the published files: said, file by file (they would be served as DEMO).
    for name in REQUIRED_FOR_SIZE[256]:
        assert f"not the published file: {tmp_path / name}: 1 bytes" in result.stderr


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

    from gateway.ops.up import _exported_from_official_weights, _onnx_dir
    from gateway.settings import Settings

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


def test_a_setting_read_under_another_name_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_INT8_MODELS", "render")  # read through an alias list (the old name is the other)
    result = _run("-m", "gateway", "up", "--demo")
    assert result.returncode == 2
    assert "invalid setting LIPSYNC_INT8_MODELS='render': render cannot be served from an int8 graph" in result.stderr
    assert "LIPSYNC_LIPSYNC" not in result.stderr


def test_a_refused_token_is_named_but_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "my-own-secret"  # 13 characters: refused
    monkeypatch.setenv("LIPSYNC_AUTH_TOKEN", f"  {secret}\n")
    result = _run("-m", "gateway", "up", "--demo")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LIPSYNC_AUTH_TOKEN=(hidden)" in lines[0], result.stderr
    assert "at least 16 characters" in lines[0] and "13 characters besides spaces" in lines[0]
    assert secret not in result.stderr and secret not in result.stdout


@pytest.mark.parametrize("token", [" " * 20, "\t\n" * 10])
def test_a_token_of_spaces_is_refused(token: str) -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError, match="0 characters besides spaces: use a secret of at least 16"):
        Settings(auth_token=token)
    # Spaces around a real token (a newline from a file) are not part of it: clients cannot send them.
    assert Settings(auth_token="\t0123456789abcdef\n").auth_token == "0123456789abcdef"


def test_no_secret_setting_is_echoed() -> None:
    from pydantic import ValidationError

    from gateway.__main__ import describe_invalid
    from gateway.settings import SECRET_SETTINGS, Settings

    # Every setting named like a secret is marked as one.
    assert {n for n in Settings.model_fields if re.search("token|secret|key|password", n)} <= SECRET_SETTINGS
    assert set(Settings.model_fields) >= SECRET_SETTINGS
    for name in SECRET_SETTINGS:
        given: dict[str, Any] = {name: ["s3cret-value-0123456789"]}  # not a string: refused, the input attached
        with pytest.raises(ValidationError) as refused:
            Settings(**given)
        line = describe_invalid(refused.value)
        assert line.startswith(f"invalid setting LIPSYNC_{name.upper()}=(hidden): "), line
        assert "s3cret" not in line
    with pytest.raises(ValidationError) as refused:  # other settings still show what was given
        Settings(port="notanumber")
    assert "LIPSYNC_PORT='notanumber'" in describe_invalid(refused.value)


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


def test_wav2lip_weights_are_optional_and_labelled_non_commercial() -> None:
    from export.official import LICENSED, OPTIONAL

    for name in [f.name for f in LICENSED["wav2lip"].files]:
        assert all(name not in names for names in REQUIRED_FOR_SIZE.values()) and name not in OPTIONAL
        file = OFFICIAL_FILES[name]
        assert file.pickle_key == "state_dict" and file.url.startswith("https://") and file.url.endswith(name)
        assert "NON-COMMERCIAL" in file.purpose and "LRS2" in file.purpose


def test_wav2lip_download_needs_the_explicit_licence_flag(tmp_path: Path) -> None:
    with socket.socket() as sock:  # were the download attempted, it would fail with "cannot reach"
        sock.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = _run("-m", "export", "download", "--checkpoints", str(tmp_path), "--base-url", mirror, "--wav2lip")
    assert result.returncode == 2
    assert "NON-COMMERCIAL" in result.stderr and "--accept-wav2lip-licence" in result.stderr
    assert OFFICIAL_FILES["wav2lip_gan.pth"].url in result.stderr
    assert "cannot reach" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_onnx_exports_wav2lip_only_when_its_weights_are_there(tmp_path: Path) -> None:
    from export.__main__ import default_stages
    from export.stages import BUILDERS, Variant

    assert "wav2lip" in default_stages(Variant(None))  # reduced: random weights
    assert "wav2lip" not in default_stages(Variant(tmp_path))
    elsewhere = tmp_path / "elsewhere.pth"
    files = (("wav2lip_gan.pth", elsewhere),)
    assert "wav2lip" not in default_stages(Variant(tmp_path, files=files))
    elsewhere.write_bytes(b"x")
    assert "wav2lip" in default_stages(Variant(tmp_path, files=files))
    (tmp_path / "wav2lip_gan.pth").write_bytes(b"x")
    assert "gfpgan" not in default_stages(Variant(tmp_path))
    assert default_stages(Variant(tmp_path), with_optional=["gfpgan"]) == list(BUILDERS)


def test_onnx_wav2lip_arguments_are_checked(tmp_path: Path) -> None:
    from export.__main__ import main

    out = tmp_path / "onnx"
    assert main(["onnx", "--reduced", "--wav2lip", str(tmp_path / "w.pth"), "--out", str(out)]) == 2
    assert main(["onnx", "--checkpoints", str(tmp_path), "--stages", "wav2lip", "--out", str(out)]) == 1
    assert main(["onnx", "--checkpoints", str(tmp_path), "--stages", "wav2lipp", "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_onnx_exports_wav2lip_from_a_file_without_the_sadtalker_weights(
    tmp_path: Path, synthetic_checkpoint: Callable[[str], Path]
) -> None:
    import json

    from export.__main__ import main

    source = synthetic_checkpoint("wav2lip_gan.pth")
    empty, out = tmp_path / "checkpoints", tmp_path / "onnx"
    empty.mkdir()
    argv = ["onnx", "--checkpoints", str(empty), "--wav2lip", str(source), "--stages", "wav2lip", "--out", str(out)]
    assert main([*argv, "--check"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["wav2lip.json", "wav2lip.onnx"]
    sidecar = json.loads((out / "wav2lip.json").read_text())
    assert sidecar["weights"].startswith("SYNTHETIC")
    assert sidecar["checkpoint_files"] == {"wav2lip_gan.pth": str(source)}
    assert sidecar["parity"]["relative_error"]["3"] <= 1e-5
