"""docker-compose.yml for a GPU host, checked without Docker: services, wiring, GPU, health, and every path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_helpers import dockerfile_stages

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"export", "triton", "gateway"}
    assert services["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert "--model-repository=/models" in services["triton"]["command"]
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
