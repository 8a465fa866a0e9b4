"""Bring up the whole system in order: weights → ONNX graphs → model repository → Triton → gateway.

Export steps run as ``python -m export`` subprocesses so that this process never imports PyTorch.
A step whose code has not landed yet is reported as such and stops the bring-up: a half system
that looks like a whole one would be worse than a clear message.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass

from gateway.settings import Settings

log = logging.getLogger("lipsync.up")


@dataclass(frozen=True)
class Step:
    name: str
    module: str  # the module that implements it; absent until its issue lands
    issue: int


# In bring-up order. The first three are export-side and run in subprocesses.
STEPS = (
    Step("export ONNX graphs (python -m export onnx)", "export.onnx", 3),
    Step("write the model repository (python -m export repository)", "export.repository", 5),
    Step("start embedded Triton", "gateway.triton_server", 5),
    Step("start the gateway and the page", "gateway.app", 6),
)


def _implemented(step: Step) -> bool:
    return importlib.util.find_spec(step.module) is not None


def _check_weights(settings: Settings) -> bool:
    if settings.demo:
        log.warning(
            "DEMO MODE: the reduced architecture with seeded random weights. The video it makes is noise "
            "shaped by the pipeline, not a result of the models."
        )
        return True
    where = ["--checkpoints", str(settings.checkpoint_dir), "--size", str(settings.size)]
    check = [sys.executable, "-m", "export", "check", *where]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return True
    log.info("official weights missing from %s: downloading them", settings.checkpoint_dir)
    # The downloader prints what failed and how to get the files by hand.
    download = [sys.executable, "-m", "export", "download", *where]
    if settings.weights_mirror:
        download += ["--base-url", settings.weights_mirror]
    return subprocess.run(download, check=False).returncode == 0


def bring_up(settings: Settings) -> int:
    """Run every step that exists, in order; report the first that does not and return non-zero."""
    if not _check_weights(settings):
        return 1
    missing = [s for s in STEPS if not _implemented(s)]
    if missing:
        log.error("the system cannot start yet; these parts are not built:")
        for step in missing:
            log.error("  - %s (issue %d; %s does not exist yet)", step.name, step.issue, step.module)
        return 1
    # Every step exists: the real sequence lands with the gateway (issue 6).
    log.error("all parts exist but the bring-up sequence is not wired yet (issue 6)")
    return 1
