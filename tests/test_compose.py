"""docker-compose.yml for a GPU host, checked without Docker: services, wiring, GPU, health, every path, and what it
exposes: the required token, ports published on loopback, unprivileged read-only containers with memory limits,
pinned images, Triton's restricted APIs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_helpers import (
    TRITON_PROTOCOLS,
    dockerfile_stages,
    gateway_triton_protocols,
    restricted_protocols,
    stage_uid,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class InterpolationError(ValueError):
    """What `docker compose` stops with: a `${VAR:?message}` whose variable is unset or empty."""


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's variable substitution of a value, for the forms it documents: $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}, and $$ for a literal $."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        value = environment.get(name)
        missing = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator is not None and operator.endswith("?") and missing:
            raise InterpolationError(f"{name}: {argument}")
        if operator is not None and operator.endswith("-") and missing:
            return argument
        return value or ""

    return _VARIABLE.sub(substitute, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (a named volume, or a host path for binds) of a service's short-syntax volumes."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


def triton_arguments(compose: dict[str, Any]) -> list[str]:
    """Triton's command line: the words of the shell script that ends in `exec tritonserver …`."""
    command = compose["services"]["triton"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2]
    assert "exec tritonserver " in script
    return script.partition("exec tritonserver ")[2].split()


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"export", "triton", "gateway", "turn"}
    assert services["turn"]["profiles"] == ["turn"]  # optional: only with --profile turn
    assert services["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert "--model-repository=/models" in triton_arguments(compose)
    assert services["export"]["restart"] == "no"  # a one-shot job


def test_triton_reserves_gpus_and_has_shared_memory(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
    assert re.fullmatch(r"\d+[gm]b", triton["shm_size"])


def test_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    triton_ports = {entry.rsplit(":", 1)[1] for entry in services["triton"]["ports"]}
    assert "8001" in triton_ports  # gRPC, for bench/perf.py --url
    assert [entry.rsplit(":", 1)[1] for entry in services["gateway"]["ports"]] == ["8000"]
    # The gateway reaches Triton's gRPC port by service name.
    assert services["gateway"]["environment"]["LIPSYNC_TRITON_URL"] == "triton:8001"


def test_everything_is_published_on_loopback_unless_asked(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            published = interpolate(entry, {})
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published}"
    # LIPSYNC_PUBLISH chooses the gateway's address.
    (gateway,) = compose["services"]["gateway"]["ports"]
    assert interpolate(gateway, {"LIPSYNC_PUBLISH": "0.0.0.0"}) == "0.0.0.0:8080:8000"


def test_the_gateway_needs_a_token(compose: dict[str, Any]) -> None:
    environment = compose["services"]["gateway"]["environment"]
    token = environment["LIPSYNC_AUTH_TOKEN"]
    # Unset or empty, `docker compose` stops with the message; set, the gateway gets it.
    for unset in ({}, {"LIPSYNC_AUTH_TOKEN": ""}):
        with pytest.raises(InterpolationError, match="at least 16 characters"):
            interpolate(token, unset)
    assert interpolate(token, {"LIPSYNC_AUTH_TOKEN": "0123456789abcdef"}) == "0123456789abcdef"
    # The image listens on every interface of the container (the published port reaches nothing else), where the
    # gateway refuses to run without a token; nothing here lets it serve anonymously.
    assert "LIPSYNC_HOST=0.0.0.0" in dockerfile_stages()["gateway"]
    assert "LIPSYNC_ALLOW_ANONYMOUS" not in environment
    assert "localhost" in interpolate(environment["LIPSYNC_ALLOWED_HOSTS"], {})


def memory_limit(service: dict[str, Any]) -> int:
    """A service's memory limit in bytes (`mem_limit` or `deploy.resources.limits.memory`); 0 when none."""
    text = service.get("mem_limit") or service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    if text is None:
        return 0
    match = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).lower())
    assert match is not None, text
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def test_every_container_runs_unprivileged(compose: dict[str, Any]) -> None:
    stages = dockerfile_stages()
    for name, service in compose["services"].items():
        user = str(service.get("user", ""))
        uid = user.partition(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{name} runs as {user or 'the image user'}"
        if "build" in service:  # our images: their own user
            assert int(uid) == stage_uid(stages[service["build"]["target"]]), name
        assert service.get("cap_drop") == ["ALL"], name
        # Only the relay keeps one, in the bounding set alone: its binary carries it as a file capability.
        assert service.get("cap_add", []) == (["NET_BIND_SERVICE"] if name == "turn" else []), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        assert service.get("read_only") is True, name
        writable = set(service.get("tmpfs", [])) | set(volume_mounts(service))
        assert "/tmp" in writable, name
        home = service.get("environment", {}).get("HOME")
        assert home is None or home in writable, f"{name}: HOME={home} is not writable"
        assert memory_limit(service) >= 2**30, f"{name} has no memory limit"


def test_volumes_are_writable_by_the_containers_that_write_them(compose: dict[str, Any]) -> None:
    # A new volume takes the owner of the directory it is first mounted on. The export starts first (Triton waits
    # for it) and mounts every volume anyone writes, on directories its image creates for its user.
    services = compose["services"]
    assert services["triton"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    export_stage = dockerfile_stages()["export"]
    created = re.search(r"install -d -o (\w+) -g \1 ([^\n]+)", export_stage)
    assert created is not None, "the export image creates no mount points for its user"
    owned = set(created.group(2).split())
    export_mounts = {source: target for target, source in volume_mounts(services["export"]).items()}
    for name, service in services.items():
        for entry in service.get("volumes", []):
            source, _target, *options = entry.split(":")
            if "ro" in options:
                continue
            assert export_mounts.get(source) in owned, f"{name} writes {source}, which starts out owned by root"
            assert str(service["user"]).partition(":")[0] == str(stage_uid(export_stage)), name


def interpolate_all(value: Any, environment: dict[str, str]) -> Any:
    """Every string value of a loaded compose file interpolated, as `docker compose` does before anything else
    (profiles included: an optional service's variables count too)."""
    if isinstance(value, str):
        return interpolate(value, environment)
    if isinstance(value, dict):
        return {key: interpolate_all(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate_all(item, environment) for item in value]
    return value


def test_the_token_alone_is_enough_to_start(compose: dict[str, Any]) -> None:
    """A plain `docker compose up` with only LIPSYNC_AUTH_TOKEN set: nothing in the file stops it."""
    resolved = interpolate_all(compose, {"LIPSYNC_AUTH_TOKEN": "0123456789abcdef"})
    assert resolved["services"]["gateway"]["environment"]["LIPSYNC_AUTH_TOKEN"] == "0123456789abcdef"
    assert resolved["services"]["turn"]["environment"]["LIPSYNC_TURN_SECRET"] == ""


def run_turn_entrypoint(compose: dict[str, Any], secret: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The turn service's entrypoint and command, interpolated as compose would, run by the local shell with a
    stand-in `turnserver` that prints its arguments."""
    turn = interpolate_all(compose["services"]["turn"], {"LIPSYNC_TURN_SECRET": secret})
    fake = tmp_path / "turnserver"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    environment = {"PATH": f"{tmp_path}:/usr/bin:/bin", **turn["environment"]}
    return subprocess.run(
        [*turn["entrypoint"], *turn["command"]], env=environment, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("secret", ["", "short", "15-characters!!"])
def test_the_turn_relay_refuses_to_start_without_a_secret(compose: dict[str, Any], secret: str, tmp_path: Path) -> None:
    result = run_turn_entrypoint(compose, secret, tmp_path)
    assert result.returncode == 1 and result.stdout == ""  # turnserver was never run
    (line,) = result.stderr.splitlines()
    assert "LIPSYNC_TURN_SECRET" in line and "at least 16 characters" in line
    if secret:
        assert secret not in line  # a secret is never echoed


def test_the_turn_relay_shares_the_gateways_secret_and_relays_no_private_peer(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    command = services["turn"]["command"]
    assert "--use-auth-secret" in command
    assert not any(arg.startswith("--static-auth-secret") for arg in command)  # from the environment, checked
    secret = "0123456789abcdef with a space"
    result = run_turn_entrypoint(compose, secret, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"--static-auth-secret={secret}", *command]
    assert services["turn"]["environment"]["LIPSYNC_TURN_SECRET"] == "${LIPSYNC_TURN_SECRET:-}"
    assert services["gateway"]["environment"]["LIPSYNC_TURN_SECRET"] == "${LIPSYNC_TURN_SECRET:-}"
    # A relay open to the internet must not reach into the host's private networks.
    denied = {arg.partition("=")[2] for arg in command if arg.startswith("--denied-peer-ip=")}
    assert {"10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255", "192.168.0.0-192.168.255.255"} <= denied


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "image" in service:
            tag = service["image"].rsplit("/", 1)[-1].partition(":")[2]
            assert re.match(r"\d+\.\d+", tag), f"{name}: {service['image']}"
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, flags=re.MULTILINE)
    assert base is not None and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "a patch release"
    stages = set(dockerfile_stages())
    for image in re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE):
        assert image == "${PYTHON_IMAGE}" or image in stages, image


def test_triton_restricts_what_nobody_here_calls(compose: dict[str, Any]) -> None:
    arguments = triton_arguments(compose)
    script = compose["services"]["triton"]["command"][2]
    # Open: what the gateway calls, health (the healthcheck) and statistics (perf_analyzer, bench/perf.py).
    open_protocols = gateway_triton_protocols() | {"health", "metadata", "statistics"}
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        restricted = restricted_protocols(arguments, flag)
        assert set(restricted) == TRITON_PROTOCOLS - open_protocols, flag
        # The key is drawn from /dev/urandom when the container starts ($$: a literal $ for the shell).
        assert set(restricted.values()) == {"triton-admin-key=$$key"}, flag
    assert re.match(r"key=\$\$\(od -An -N(\d+) -tx1 /dev/urandom", script)


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "http://localhost:8000/v2/health/ready" in services["triton"]["healthcheck"]["test"]
    assert any("/healthz" in part for part in services["gateway"]["healthcheck"]["test"])
    assert services["triton"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert services["gateway"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_export_writes_the_repository_triton_serves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    export, triton = volume_mounts(services["export"]), volume_mounts(services["triton"])
    assert export["/models"] == triton["/models"]
    script = (REPO_ROOT / "docker" / "export.sh").read_text()
    assert "repository --target gpu" in script and '--out "$models"' in script and "models=/models" in script
    # The engine cache path written into the configs is a persistent volume in the Triton container.
    cache = re.search(r"--trt-cache (\S+)", script)
    assert cache is not None and cache.group(1) in triton


def test_every_path_exists_in_the_repository(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for source in volume_mounts(service).values():
            if source.startswith((".", "/")):  # a bind mount
                assert (REPO_ROOT / source).exists(), f"{name} binds {source}, which is not in the repository"
            else:
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"
        build = service.get("build")
        if build is None:
            continue
        context = REPO_ROOT / build["context"]
        dockerfile = context / build["dockerfile"]
        assert context.is_dir() and dockerfile.is_file(), name
        assert build["target"] in dockerfile_stages(dockerfile), f"{name}: no stage {build['target']}"


def test_images_install_only_what_they_need() -> None:
    stages = dockerfile_stages(REPO_ROOT / "docker" / "Dockerfile")
    assert '".[serve]"' in stages["gateway"]
    assert "torch" not in stages["gateway"].lower() and "[export]" not in stages["gateway"]
    assert '".[export]"' in stages["export"]
    entrypoint = REPO_ROOT / "docker" / "export.sh"
    assert f"/app/docker/{entrypoint.name}" in stages["export"] and os.access(entrypoint, os.X_OK)
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert {".venv", "checkpoints", "artifacts"} <= set(ignored)
