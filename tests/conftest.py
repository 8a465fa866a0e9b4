"""Shared fixtures and markers.

- ``synthetic_checkpoint(file_name)`` writes a checkpoint in the official layout (names, shapes, dtypes and
  file format from the manifests) filled by the golden weight rule, once per test session.
- Tests marked ``gpu`` are skipped, with the reason, on machines without an NVIDIA GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

# Starlette serves the page's files with anyio.open_file, which anyio imports on first use. anyio is a pytest
# plugin, so that import is compiled by pytest's assertion rewriter; done in a gateway's server thread while
# the main thread compiles too, CPython 3.11 can fail it ("AST constructor recursion depth mismatch"). Import it
# here, once, in the main thread.
anyio.open_file  # noqa: B018

# Starlette's TestClient sends `Host: testserver`; the gateway answers only to the names it is given (DNS
# rebinding), so the tests give it that one. The Host tests set their own list.
os.environ.setdefault("LIPSYNC_ALLOWED_HOSTS", "testserver")


# Run in the agents' own environment by tests/test_agent_frameworks.py, not collected here.
collect_ignore = ["frameworks"]


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


# The fixtures below export the reduced models; torch is imported only when a test asks for them.
import typing  # noqa: E402

if typing.TYPE_CHECKING:
    from export.stages import StageFactory
    from gateway.triton.server import EmbeddedTriton


@pytest.fixture(scope="session")
def reduced_factory() -> StageFactory:
    """Builds the REDUCED architecture's stage modules (seeded random weights); one per session, so cached."""
    from export.stages import StageFactory, Variant

    return StageFactory(Variant(checkpoints=None))


@pytest.fixture(scope="session")
def reduced_onnx_dir(tmp_path_factory: pytest.TempPathFactory, reduced_factory: StageFactory) -> Path:
    """Every stage (GFPGAN and the ensemble glue included) of ``reduced_factory`` exported once per session."""
    from export.onnx import export_and_check
    from export.stages import BUILDERS

    out = tmp_path_factory.mktemp("onnx_reduced")
    for stage in BUILDERS:
        export_and_check(
            stage,
            reduced_factory.build(stage),
            out,
            grid_sample=reduced_factory.variant.grid_sample,
            provenance=reduced_factory.variant.describe(),
            check=False,
        )
    return out


@pytest.fixture(scope="session")
def triton_server(reduced_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """The real embedded tritonserver serving the reduced models' cpu repository, once per test session."""
    from export.repository import RepositorySettings, write_repository
    from gateway.triton.server import EmbeddedTriton

    settings = RepositorySettings(target="cpu", max_queue_delay_us=2000, intra_op_threads=1)
    repository = write_repository(reduced_onnx_dir, tmp_path_factory.mktemp("repository"), settings)
    with EmbeddedTriton().start(repository.path, auto_complete_config=False) as server:
        yield server
    if server.crash is not None:
        _CRASHES.append(server.crash)


# The shared server's crash, if any, said after everything else: every test after it fails only with
# "unreachable", and the last lines are the part of a long log people read.
_CRASHES: list[str] = []


def pytest_unconfigure(config: pytest.Config) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for crash in _CRASHES:
        if reporter is not None:
            reporter.section("the session's embedded Triton crashed", sep="!", red=True, bold=True)
            reporter.write_line(crash)


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    """A real portrait: scikit-image's astronaut photo as JPEG bytes."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real spoken sentence (espeak-ng), 16 kHz mono WAV."""
    out = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run(
        ["espeak-ng", "-s", "160", "-w", str(out), "The quick brown fox jumps over the lazy dog."],
        check=True,
        capture_output=True,
    )
    return out
