"""Shared fixtures and markers.

- ``synthetic_checkpoint(file_name)`` writes a checkpoint in the official layout (names, shapes, dtypes and
  file format from the manifests) filled by the golden weight rule, once per test session.
- Tests marked ``gpu`` are skipped, with the reason, on machines without an NVIDIA GPU.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def _has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi -L lists none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A factory: official file name → path of a synthetic checkpoint in that file's layout."""
    from export.synthetic import write_synthetic_checkpoint

    directory = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def make(file_name: str) -> Path:
        if file_name not in made:
            made[file_name] = write_synthetic_checkpoint(file_name, directory)
        return made[file_name]

    return make
