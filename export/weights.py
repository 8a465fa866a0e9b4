"""Official checkpoint files: manifests, reading, strict loading, spectral-norm folding.

Every network module exposes a pure ``convert_state_dict(official) -> module_state_dict``
(the checkpoint filter). This module supplies the pieces those filters share and the strict
load that follows them: a tensor that is missing, extra or mis-shaped is an error that names
the file, the tensor and both shapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"

# The files we have manifests for (the 512 SadTalker file shares the 256 file's tensor names; wav2lip.pth
# and wav2lip_gan.pth have the same layout).
MANIFESTED_FILES = tuple(sorted(p.name.removesuffix(".json") for p in MANIFEST_DIR.glob("*.*.json")))

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file does not match the layout a module expects."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an official checkpoint: its name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype


@dataclass(frozen=True)
class Manifest:
    """The layout of one official checkpoint file (tensor order as upstream saved it)."""

    file_name: str
    format: str
    note: str
    tensors: tuple[TensorSpec, ...]

    def with_prefix(self, prefix: str) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.name.startswith(prefix))


def read_manifest(file_name: str, directory: Path = MANIFEST_DIR) -> Manifest:
    """Read ``<file_name>.json``: the names, shapes and dtypes of an official checkpoint."""
    raw = json.loads((directory / f"{file_name}.json").read_text())
    tensors = tuple(TensorSpec(name, tuple(shape), dtype) for name, shape, dtype in raw["tensors"])
    return Manifest(file_name, raw["format"], raw["note"], tensors)


# Top-level keys of the torch pickles that hold the state dict, in order of preference: ``mapping`` (SadTalker's
# mapping nets), ``params_ema`` then ``params`` (GFPGAN), ``state_dict`` (Wav2Lip).
STATE_DICT_KEYS = ("mapping", "params_ema", "params", "state_dict")


def read_checkpoint(path: Path) -> StateDict:
    """Read an official checkpoint file into a flat ``name → tensor`` dict.

    ``.safetensors`` files are flat; the ``.pth``/``.pth.tar`` files are torch pickles whose state dict sits
    under one of :data:`STATE_DICT_KEYS`. The other top-level entries (an optimizer's state, step counters, a
    second copy of the weights) are not used, and a log line names them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path.name}: expected a dict at the top level, found {type(payload).__name__}")
    for key in STATE_DICT_KEYS:
        if key in payload and isinstance(payload[key], Mapping):
            ignored = sorted(str(k) for k in payload if k != key)
            if ignored:
                log.info("%s: using the tensors under %r; ignoring top-level %s", path.name, key, ", ".join(ignored))
            return dict(payload[key])
    raise CheckpointError(
        f"{path.name}: none of the expected top-level keys ({', '.join(STATE_DICT_KEYS)}) is present; "
        f"found {sorted(payload)}"
    )


def is_synthetic(path: Path) -> bool:
    """Whether a checkpoint file was written by ``python -m export synthetic`` (it marks its files)."""
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("synthetic") == "true"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return isinstance(payload, Mapping) and payload.get("synthetic") is True


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The tensors under ``prefix`` (e.g. ``generator.``), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def fold_spectral_norm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Replace every ``X.weight_orig``/``X.weight_u``/``X.weight_v`` triple by a plain ``X.weight``.

    In eval mode PyTorch's spectral norm does no power iteration: it divides the weight by
    σ = uᵀ·W·v with W the weight reshaped to (out_channels, -1). Doing that once here is exact.
    """
    folded: StateDict = {}
    for name, tensor in state_dict.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("weight_u", "weight_v"):
            continue
        if leaf == "weight_orig":
            base = name[: -len("_orig")]
            u = state_dict[base + "_u"].double()
            v = state_dict[base + "_v"].double()
            w = tensor.double()
            sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
            folded[base] = (w / sigma).to(tensor.dtype)
        else:
            folded[name] = tensor
    return folded


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignored: Collection[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``, requiring every tensor to be used or listed in ``ignored``.

    ``source`` names the file (and prefix) in error messages. Dtypes are cast to the module's.
    """
    expected = module.state_dict()
    given = {k: v for k, v in state_dict.items() if k not in set(ignored)}
    problems: list[str] = []
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra[:10])}" + (" ..." if len(extra) > 10 else ""))
    for name in sorted(set(expected) & set(given)):
        if tuple(expected[name].shape) != tuple(given[name].shape):
            problems.append(
                f"tensor {name} has shape {tuple(given[name].shape)} in the file, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in given.items()}, strict=True)
