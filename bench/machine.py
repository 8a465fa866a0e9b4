"""The CPU class a figure was taken on: the ``lscpu`` flags that decide which kernels the runtimes pick."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# The flags that change the kernels of ONNX Runtime, OpenVINO and PyTorch on x86-64.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_class() -> str:
    """e.g. ``AMD EPYC …: avx2 avx512f avx512_vnni avx512_bf16``, and any ISA cap set in the environment."""
    flags: set[str] = set()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    shown = " ".join(f for f in KERNEL_FLAGS if f in flags) or "no AVX2"
    caps = [
        f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if name in os.environ
    ]
    return f"{model or 'x86-64'}: {shown}" + (f" (held by {', '.join(caps)})" if caps else "")
