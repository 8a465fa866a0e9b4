"""The CPU class a figure was taken on: the ``lscpu`` flags that decide which kernels the runtimes pick."""

from __future__ import annotations

import os

from lipsync.cpu import cpu_flags, cpu_model

# The flags that change the kernels of ONNX Runtime, OpenVINO and PyTorch on x86-64.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_class() -> str:
    """e.g. ``AMD EPYC …: avx2 avx512f avx512_vnni avx512_bf16``, and any ISA cap set in the environment."""
    flags, model = cpu_flags(), cpu_model()
    shown = " ".join(f for f in KERNEL_FLAGS if f in flags) or "no AVX2"
    caps = [
        f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if name in os.environ
    ]
    return f"{model or 'x86-64'}: {shown}" + (f" (held by {', '.join(caps)})" if caps else "")
