"""Build the PyTorch module behind each served stage, from official weights or for the demo.

A ``Variant`` (:mod:`export.building`) says which weights and which forms: official checkpoints from a
directory (the full architecture), or none — the reduced-width architecture with seeded random weights, for
tests and the demo. Every module returned takes exactly its stage's inputs (``export.engines.STAGES``) in order.

Each engine's ``build.py`` (``EngineExport.builders``) maps its stages to builders; :data:`BUILDERS` merges
them. A builder takes its tensors from a ``WeightSource``: the files (what ``StageFactory`` uses), or
``export.synthetic.SyntheticWeights`` — official layouts made in memory (``bench/gpu.py``, no files).
"""

from __future__ import annotations

import functools
import importlib
import zlib

import torch
from torch import nn

from export.building import Builder, Variant, WeightFiles, WeightSource
from export.engines import EXPORTS

__all__ = ["BUILDERS", "Builder", "StageFactory", "Variant", "WeightSource"]


def _builders() -> dict[str, Builder]:
    builders: dict[str, Builder] = {}
    for part in EXPORTS:
        theirs: dict[str, Builder] = importlib.import_module(part.builders).BUILDERS
        if set(theirs) != {stage.name for stage in part.stages}:
            raise ValueError(f"{part.builders} builds {sorted(theirs)}, not the stages {part.name} declares")
        builders.update(theirs)
    return builders


BUILDERS: dict[str, Builder] = _builders()


class StageFactory:
    """Builds stage modules for one variant, reading each official file at most once."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self._weights = None if variant.checkpoints is None else WeightFiles(variant)

    @functools.cache  # noqa: B019 - one factory per export run; the cache dies with it
    def build(self, stage: str) -> nn.Module:
        if stage not in BUILDERS:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(BUILDERS)}")
        if self.variant.reduced:
            # Seed per stage so each module's random weights depend neither on which others were built nor on
            # which engines are registered.
            torch.manual_seed(self.variant.seed * 1000 + zlib.crc32(stage.encode()) % 1000)
        return BUILDERS[stage](self.variant, self._weights).eval()
