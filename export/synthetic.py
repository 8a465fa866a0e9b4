"""Synthetic checkpoints in the official layouts, for tests and for the demo without official weights.

The values follow the deterministic rule of ``tests/golden/README.md`` (the rule the golden fixtures
were made with), optionally shifted by a seed. Weights made here are never official: everything built
from them is labelled as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from export.official import OFFICIAL_FILES
from export.weights import MANIFESTED_FILES, Manifest, StateDict, TensorSpec, read_manifest

# The seed shifts the index so that different seeds give unrelated tensors; seed 0 is the golden rule.
_SEED_STRIDE = 104_729.0


def synthetic_tensor(spec: TensorSpec, index: int, seed: int = 0) -> torch.Tensor:
    """Tensor number ``index`` of a manifest, by the golden rule (in float64, cast to the spec's dtype)."""
    if spec.dtype.startswith("int"):
        return torch.zeros(spec.shape, dtype=spec.torch_dtype)
    n = math.prod(spec.shape)
    i = np.arange(n, dtype=np.float64)
    x = np.sin((i + 1.0 + 7919.0 * index + _SEED_STRIDE * seed) * 12.9898) * 43758.5453
    u = (x - np.floor(x)).reshape(spec.shape)
    if spec.name.endswith("running_var"):
        value = 0.75 + 0.5 * u
    elif spec.name.endswith("running_mean"):
        value = 0.2 * (u - 0.5)
    elif len(spec.shape) >= 2:
        fan_in = math.prod(spec.shape[1:])
        value = (u - 0.5) * 2.0 * math.sqrt(3.0 / fan_in)
    elif spec.name.endswith("weight"):
        value = 1.0 + 0.2 * (u - 0.5)
    else:
        value = 0.2 * (u - 0.5)
    return torch.from_numpy(np.ascontiguousarray(value)).to(spec.torch_dtype)


def _normalise_spectral_vectors(state: StateDict) -> None:
    """Make each spectral-norm (u, v) pair consistent with its weight: v/‖v‖, u = W·v/‖W·v‖ (float64)."""
    for name in [k for k in state if k.endswith(".weight_orig")]:
        base = name[: -len("_orig")]
        w = state[name].double()
        v = state[base + "_v"].double()
        v = v / v.norm()
        wv = w.reshape(w.shape[0], -1) @ v
        state[base + "_v"] = v.to(state[base + "_v"].dtype)
        state[base + "_u"] = (wv / wv.norm()).to(state[base + "_u"].dtype)


def synthetic_state_dict(manifest: Manifest, seed: int = 0, prefix: str = "") -> StateDict:
    """A full state dict in the manifest's layout (only the tensors under ``prefix`` if given).

    Tensor numbering always counts over the whole manifest, as the golden rule requires.
    """
    state = {
        spec.name: synthetic_tensor(spec, k, seed)
        for k, spec in enumerate(manifest.tensors)
        if spec.name.startswith(prefix)
    }
    _normalise_spectral_vectors(state)
    return state


def golden_weights(file_name: str, prefix: str = "") -> StateDict:
    """The golden-rule tensors of one official file under ``prefix``, with the prefix removed (what
    ``tests/golden`` was computed with, as the checkpoint filters receive it)."""
    state = synthetic_state_dict(read_manifest(file_name), prefix=prefix)
    return {name[len(prefix) :]: tensor for name, tensor in state.items()}


class SyntheticWeights:
    """A weight source for ``export.stages.BUILDERS`` that makes each official file's tensors in memory.

    The same values as the files ``write_synthetic_checkpoint`` writes (so the same modules), without
    writing or reading files — no safetensors needed. Each (file, prefix) is made once.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._made: dict[tuple[str, str], StateDict] = {}

    def get(self, file_name: str, prefix: str = "") -> tuple[StateDict, str]:
        if file_name not in MANIFESTED_FILES:
            raise ValueError(f"no manifest for {file_name!r}; known: {', '.join(MANIFESTED_FILES)}")
        if (file_name, prefix) not in self._made:
            state = synthetic_state_dict(read_manifest(file_name), self.seed, prefix)
            self._made[file_name, prefix] = {name[len(prefix) :]: tensor for name, tensor in state.items()}
        source = f"SYNTHETIC {file_name} [{prefix or 'all'}] (made in memory, seed {self.seed})"
        return self._made[file_name, prefix], source

    def clear(self) -> None:
        """Forget the tensors made so far (the modules built from them keep their own copies)."""
        self._made.clear()


def write_synthetic_checkpoint(file_name: str, directory: Path, seed: int = 0) -> Path:
    """Write ``directory/file_name`` in the official format, filled with synthetic values."""
    if file_name not in MANIFESTED_FILES:
        raise ValueError(f"no manifest for {file_name!r}; known: {', '.join(MANIFESTED_FILES)}")
    state = synthetic_state_dict(read_manifest(file_name), seed)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    key = OFFICIAL_FILES[file_name].pickle_key
    tmp = path.with_name(path.name + ".partial")
    if key is None:
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"synthetic": "true", "seed": str(seed)})
    else:
        torch.save({key: state, "synthetic": True, "seed": seed}, tmp)
    tmp.replace(path)
    return path
