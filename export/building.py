"""What a stage's module is built from: the variant (official weights or the reduced demo architecture) and the
official files' tensors, and the helper most builders share. Each engine's ``build.py`` uses these; the
factory that calls them is :mod:`export.stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from export.official import file_for_size
from export.weights import MANIFESTED_FILES, StateDict, is_synthetic, read_checkpoint, strip_prefix

if TYPE_CHECKING:
    from torch import nn

    from export.specs import StageSpec


@dataclass(frozen=True)
class Variant:
    """Which weights and forms to build. ``checkpoints=None`` is the reduced demo architecture.

    ``size``: the render size (a file with render sizes stands in for another, export/official.py).
    ``files``: official files read from elsewhere than ``checkpoints``, as (official name, path) pairs (a
    licensed engine's file named on the command line).
    """

    checkpoints: Path | None
    size: Literal[256, 512] = 256
    grid_sample: Literal["4d", "5d"] = "5d"
    seed: int = 0
    files: tuple[tuple[str, Path], ...] = ()

    def __post_init__(self) -> None:
        if self.checkpoints is None and self.files:
            raise ValueError("checkpoint files need official weights (checkpoints), not the reduced variant")

    def file(self, name: str) -> Path | None:
        """Where this variant reads the official file ``name`` (``None`` for the reduced variant); it may not
        exist."""
        if self.checkpoints is None:
            return None
        return dict(self.files).get(name, self.checkpoints / file_for_size(name, self.size))

    @property
    def reduced(self) -> bool:
        return self.checkpoints is None

    def describe(self) -> dict[str, object]:
        """Provenance for sidecars and logs: never lets random weights pass for official ones."""
        if self.checkpoints is None:
            weights = f"RANDOM (reduced architecture, seed {self.seed}) - not a result of the models"
        elif any(is_synthetic(p) for p in self._files(self.checkpoints)):
            weights = f"SYNTHETIC official-layout checkpoints in {self.checkpoints} - not the official weights"
        else:
            weights = f"official checkpoints in {self.checkpoints}"
        described: dict[str, object] = {
            "weights": weights,
            "reduced": self.reduced,
            "size": self.size,
            "grid_sample": self.grid_sample,
        }
        if self.files:
            described["checkpoint_files"] = {name: str(path) for name, path in self.files}
        return described

    def _files(self, directory: Path) -> list[Path]:
        """The official-layout files this variant may read."""
        files = [p for p in sorted(directory.glob("*")) if p.name in MANIFESTED_FILES]
        return files + [path for _, path in self.files if path.is_file()]


@dataclass
class WeightFiles:
    """Reads each official file once per build session, from the variant's directory or where it names one."""

    variant: Variant
    _files: dict[str, StateDict] = field(default_factory=dict)

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]:
        path = self.variant.file(file_name)
        if path is None:
            raise ValueError("the reduced variant reads no files")
        if path.name not in self._files:
            self._files[path.name] = read_checkpoint(path)
        state = self._files[path.name]
        return (strip_prefix(state, prefix) if prefix else state), f"{path.name} [{prefix or 'all'}]"


class WeightSource(Protocol):
    """Gives the tensors of an official file under ``prefix`` (prefix removed), and a name for messages."""

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]: ...


Builder = Callable[[Variant, WeightSource | None], "nn.Module"]


def networks(
    spec: StageSpec,
    reduced: Callable[[Variant], nn.Module],
    load: Callable[[StateDict, str, Variant], nn.Module],
) -> Builder:
    """A network built from the tensors its spec names (``checkpoint``: file and prefix), or its reduced form
    with random weights."""

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            return reduced(variant)
        state, source = weights.get(spec.weights_file, spec.weights_prefix)
        return load(state, source, variant)

    return build
