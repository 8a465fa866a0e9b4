"""What a stage's module is built from: the variant (official weights or the reduced demo architecture) and the
official files' tensors, and the helper most builders share. Each engine's ``build.py`` uses these; the
factory that calls them is :mod:`export.stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from export.official import WAV2LIP
from export.weights import MANIFESTED_FILES, StateDict, is_synthetic, read_checkpoint, strip_prefix

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Variant:
    """Which weights and forms to build. ``checkpoints=None`` is the reduced demo architecture.

    ``wav2lip``: the Wav2Lip checkpoint file (default: ``wav2lip_gan.pth`` in ``checkpoints``).
    """

    checkpoints: Path | None
    size: Literal[256, 512] = 256
    grid_sample: Literal["4d", "5d"] = "5d"
    seed: int = 0
    wav2lip: Path | None = None

    def __post_init__(self) -> None:
        if self.checkpoints is None and self.wav2lip is not None:
            raise ValueError("a Wav2Lip checkpoint file needs official weights (checkpoints), not the reduced variant")

    @property
    def wav2lip_checkpoint(self) -> Path | None:
        """The Wav2Lip file this variant reads (``None`` for the reduced variant); it may not exist."""
        if self.checkpoints is None:
            return None
        return self.wav2lip if self.wav2lip is not None else self.checkpoints / WAV2LIP

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
        if self.wav2lip is not None:
            described["wav2lip_checkpoint"] = str(self.wav2lip)
        return described

    def _files(self, directory: Path) -> list[Path]:
        """The official-layout files this variant may read."""
        files = [p for p in sorted(directory.glob("*")) if p.name in MANIFESTED_FILES]
        if self.wav2lip is not None and self.wav2lip.is_file():
            files.append(self.wav2lip)
        return files


@dataclass
class WeightFiles:
    """Reads each official file once per build session."""

    directory: Path
    size: int
    _files: dict[str, StateDict] = field(default_factory=dict)

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]:
        file_name = file_name.replace("_256.", f"_{self.size}.")
        if file_name not in self._files:
            self._files[file_name] = read_checkpoint(self.directory / file_name)
        state = self._files[file_name]
        return (strip_prefix(state, prefix) if prefix else state), f"{file_name} [{prefix or 'all'}]"


class WeightSource(Protocol):
    """Gives the tensors of an official file under ``prefix`` (prefix removed), and a name for messages."""

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]: ...


Builder = Callable[[Variant, WeightSource | None], "nn.Module"]


def networks(
    file_name: str,
    prefix: str,
    reduced: Callable[[Variant], nn.Module],
    load: Callable[[StateDict, str, Variant], nn.Module],
) -> Builder:
    """A network built from ``prefix`` in an official file, or its reduced form with random weights."""

    def build(variant: Variant, weights: WeightSource | None) -> nn.Module:
        if weights is None:
            return reduced(variant)
        state, source = weights.get(file_name, prefix)
        return load(state, source, variant)

    return build
