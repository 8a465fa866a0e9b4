"""The official weight files of every engine (each engine lists its own in ``export/engines/<engine>/``, with
where upstream publishes them, their digests, and when each is needed), and checking a directory for them.

Torch-free on purpose, so that launchers can check for the files without importing PyTorch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from export.engines import EXPORTS
from export.specs import EngineExport, OfficialFile

OFFICIAL_FILES: dict[str, OfficialFile] = {f.name: f for e in EXPORTS for f in e.files}
RENDER_SIZES = (256, 512)
# What a deployment of each render size needs (a file with render sizes stands in for the one it replaces).
REQUIRED_FOR_SIZE: dict[int, tuple[str, ...]] = {
    size: tuple(
        f.name
        for f in OFFICIAL_FILES.values()
        if f.need == "required" and (not f.render_sizes or size in f.render_sizes)
    )
    for size in RENDER_SIZES
}
# Files fetched with their stage's flag (`download --gfpgan`), by stage.
OPTIONAL_FILES: dict[str, tuple[str, ...]] = {
    stage.name: (stage.weights_file,) for e in EXPORTS for stage in e.stages if stage.name in e.optional_stages
}
OPTIONAL: tuple[str, ...] = tuple(name for names in OPTIONAL_FILES.values() for name in names)
# Engines whose files are fetched only once their licence is accepted.
LICENSED: dict[str, EngineExport] = {e.name: e for e in EXPORTS if e.licence is not None}


def file_for_size(name: str, size: int) -> str:
    """The file that stands in for ``name`` at render size ``size`` (``name`` itself where none does)."""
    return next((f.name for f in OFFICIAL_FILES.values() if f.replaces == name and size in f.render_sizes), name)


def missing_files(directory: Path, size: int = 256) -> list[OfficialFile]:
    """The required official files that are not in ``directory``."""
    return [OFFICIAL_FILES[n] for n in REQUIRED_FOR_SIZE[size] if not (directory / n).is_file()]


def how_to_get(missing: list[OfficialFile], directory: Path) -> str:
    """Instructions a user can follow by hand (the files are several hundred MB each)."""
    lines = [f"Official weights are missing from {directory}:"]
    lines += [f"  {f.name:36s} {f.purpose}\n      {f.url}" for f in missing]
    lines += [
        f"Download them into {directory}/ (for example: curl -L -o {directory}/NAME URL),",
        "or run `make demo` to try the system on random weights of the reduced architecture (not a result).",
    ]
    return "\n".join(lines)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in pieces (the weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_present(directory: Path, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Check the named official files that are in ``directory`` against their published size and SHA-256.

    Returns (wrong, unverified): one message per file that is not the published one, and the names of the files
    that are there but have no published digest to check against. Absent files are left to ``missing_files``.
    """
    wrong: list[str] = []
    unverified: list[str] = []
    for name in names:
        file, path = OFFICIAL_FILES[name], directory / name
        if not path.is_file():
            continue
        if file.sha256 is None:
            unverified.append(name)
            continue
        # The size first: it needs no reading, and a truncated or foreign file usually differs there already.
        if file.size is not None and (have := path.stat().st_size) != file.size:
            wrong.append(f"{path}: {have} bytes, the published file has {file.size}; delete it and download it again")
        elif (got := file_sha256(path)) != file.sha256:
            wrong.append(
                f"{path}: SHA-256 {got}, the published file's is {file.sha256}; delete it and download it again"
            )
    return wrong, unverified
