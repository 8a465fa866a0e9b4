"""What this machine's CPU is: its model name and the ``/proc/cpuinfo`` flags that decide which kernels the
runtimes (PyTorch, ONNX Runtime, OpenVINO) pick. Empty where there is no ``/proc/cpuinfo`` (not Linux)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", frozenset()
    model = next((line.partition(":")[2].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), [])
    return model, frozenset(flags)


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def cpu_model() -> str:
    return _cpuinfo()[0]
