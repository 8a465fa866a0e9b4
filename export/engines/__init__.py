"""The export side's engine registry. Each engine's folder holds all of its own:
- ``__init__.py`` (torch-free): its stages, ensembles, int8 forms, TensorRT rules and official files;
- ``build.py``: each stage's PyTorch module; ``steps.py``: the small graphs that glue its ensembles;
- ``reference.py``: its offline whole-clip pipeline, the ground truth of the served path.

``shared`` holds what several engines use (the mel front-end, the GFPGAN enhancer). A new engine is a new
folder here plus one line in :data:`EXPORTS`; everything else reads the merged tables below. Torch-free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from export.engines import sadtalker, shared, wav2lip
from export.specs import EngineExport, EnsembleSpec, Int8Form, StageSpec

EXPORTS: tuple[EngineExport, ...] = (shared.EXPORT, sadtalker.EXPORT, wav2lip.EXPORT)


def check_exports(exports: Iterable[EngineExport]) -> None:
    """Stages and ensembles are Triton models of one repository: one name each across engines; and what an
    engine says of its stages (int8 forms, TensorRT rules, optional ones) names stages it declares."""
    exports = list(exports)
    counts = Counter([s.name for e in exports for s in e.stages] + [s.name for e in exports for s in e.ensembles])
    if twice := sorted(name for name, count in counts.items() if count > 1):
        raise ValueError(f"named twice across engines: {', '.join(twice)}")
    for part in exports:
        own = {stage.name for stage in part.stages}
        if stray := sorted({*part.int8, *part.tensorrt_fp32, *part.optional_stages} - own):
            raise ValueError(f"{part.name} describes stages it does not declare: {', '.join(stray)}")


check_exports(EXPORTS)

STAGES: dict[str, StageSpec] = {s.name: s for e in EXPORTS for s in e.stages}
ENSEMBLES: dict[str, EnsembleSpec] = {s.name: s for e in EXPORTS for s in e.ensembles}
# Stages with an int8 form on the cpu target (export/quantize.py), and how to calibrate it.
QUANTIZABLE: dict[str, Int8Form] = {name: form for e in EXPORTS for name, form in e.int8.items()}
# Networks TensorRT builds in FP32 on the gpu target even when it is fp16, and why (export/repository.py).
TENSORRT_FP32_MODELS: dict[str, str] = {name: why for e in EXPORTS for name, why in e.tensorrt_fp32.items()}
