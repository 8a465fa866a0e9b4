"""Bring up the whole system in order: weights → ONNX graphs → model repository → Triton → gateway + page.

Export steps run as ``python -m export`` subprocesses so that this process never imports PyTorch; each
step is skipped when its output is already there. Ctrl-C (or SIGTERM) stops the gateway and the embedded
Triton with all its stub processes.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

from gateway.app import create_app
from gateway.settings import Settings
from gateway.transport.http_server import PortInUse, bind, serve
from gateway.triton.server import EmbeddedTriton, exit_on_signals

log = logging.getLogger("lipsync.up")

# Written after a successful export (with parity checks), so an interrupted export is redone.
EXPORT_COMPLETE = "export-complete"


def _run(step: str, command: list[str]) -> bool:
    log.info("%s: %s", step, " ".join(command[1:]))
    return subprocess.run(command, check=False).returncode == 0


def _check_weights(settings: Settings) -> bool:
    if settings.demo:
        log.warning(
            "DEMO MODE: the reduced architecture with seeded random weights. The video it makes is noise "
            "shaped by the pipeline, not a result of the models."
        )
        return True
    where = ["--checkpoints", str(settings.checkpoint_dir), "--size", str(settings.render_size)]
    check = [sys.executable, "-m", "export", "check", *where]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return True
    log.info("official weights missing from %s: downloading them", settings.checkpoint_dir)
    # The downloader prints what failed and how to get the files by hand.
    download = [sys.executable, "-m", "export", "download", *where]
    if settings.weights_mirror:
        download += ["--base-url", settings.weights_mirror]
    return _run("weights", download)


def _onnx_dir(settings: Settings) -> Path:
    return settings.artifacts_dir / "onnx" / ("demo" if settings.demo else f"official-{settings.render_size}")


def _export(settings: Settings) -> bool:
    out = _onnx_dir(settings)
    if (out / EXPORT_COMPLETE).exists():
        log.info("ONNX graphs: reusing %s", out)
        return True
    # The export knows which optional stages (an enhancer) there are and whether their weights are here.
    command = [sys.executable, "-m", "export", "onnx", "--out", str(out), "--check", "--with-optional"]
    if settings.demo:
        command.append("--reduced")
    else:
        command += ["--checkpoints", str(settings.checkpoint_dir), "--size", str(settings.render_size)]
    if not _run("export ONNX graphs", command):
        return False
    (out / EXPORT_COMPLETE).touch()
    return True


def _exported_from_official_weights(settings: Settings) -> bool:
    """What the export recorded about its weights: official only when every graph's sidecar says so."""
    recorded = [json.loads(sidecar.read_text()).get("weights") for sidecar in _onnx_dir(settings).glob("*.json")]
    weights = [str(w) for w in recorded if w is not None]
    return bool(weights) and all(w.startswith("official checkpoints") for w in weights)


def _quantize(settings: Settings) -> bool:
    """The int8 graphs asked for (LIPSYNC_INT8_MODELS), each made beside its fp32 graph when it is missing or was
    made from another export of it. A model's graph and its export stage bear its name."""
    onnx = _onnx_dir(settings)
    if not settings.int8_models:
        return True
    if missing := [name for name in settings.int8_models if not (onnx / f"{name}.onnx").is_file()]:
        log.error(
            "LIPSYNC_INT8_MODELS names %s, but no such graph was exported to %s (are its weights there?)",
            ", ".join(missing),
            onnx,
        )
        return False
    stages = ",".join(settings.int8_models)
    command = [sys.executable, "-m", "export", "quantize", "--onnx", str(onnx), "--stages", stages, "--if-stale"]
    return _run("int8 graphs", command)


def _repository(settings: Settings) -> bool:
    command = [sys.executable, "-m", "export", "repository", "--target", "cpu"]
    if settings.int8_models:
        command += ["--int8", ",".join(settings.int8_models)]
    if settings.openvino_models:
        command += ["--openvino", ",".join(settings.openvino_models)]
    return _run(
        "model repository", [*command, "--onnx", str(_onnx_dir(settings)), "--out", str(settings.model_repository)]
    )


def bring_up(settings: Settings) -> int:
    """Run every step in order; stop at the first that fails, saying why. Blocks while serving."""
    try:
        # First, so that a second instance changes nothing of the first one's (its repository, its Triton).
        sock = bind(settings.host, settings.port)
    except PortInUse as err:
        log.error("%s", err)
        return 2
    with sock:
        return _bring_up(settings, sock)


def prepare_repository(settings: Settings) -> Settings | None:
    """Weights, ONNX graphs and the model repository, each made when missing; None (said why) if a step failed.

    The settings come back labelled DEMO when the graphs were not exported from the official weights.
    """
    if not (_check_weights(settings) and _export(settings) and _quantize(settings) and _repository(settings)):
        return None
    if not settings.demo and not _exported_from_official_weights(settings):
        log.warning("the exported models were not made from the official weights: serving them labelled DEMO")
        settings = settings.model_copy(update={"demo": True})
    return settings


def serve_gateway(settings: Settings) -> int:
    """The gateway alone, for Triton servers elsewhere (``LIPSYNC_TRITON_URL``): ``python -m gateway serve``."""
    if settings.triton_url is None:
        log.error(
            "LIPSYNC_TRITON_URL is not set: `serve` runs the gateway for Triton servers elsewhere "
            "(`up` starts an embedded one)"
        )
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except PortInUse as err:
        log.error("%s", err)
        return 2
    exit_on_signals()
    with sock:
        try:
            log.info("gateway on http://%s:%d/ for Triton %s", settings.host, settings.port, settings.triton_url)
            serve(create_app(settings), settings, sock)
        except KeyboardInterrupt:
            log.info("stopping")
    return 0


def _bring_up(settings: Settings, sock: socket.socket) -> int:
    prepared = prepare_repository(settings)
    if prepared is None:
        return 1
    settings = prepared
    exit_on_signals()
    triton: EmbeddedTriton | None = None
    try:
        if settings.triton_url is None:
            log.info("starting the embedded Triton (CPU, Python backend + ONNX Runtime)")
            triton = EmbeddedTriton().start(settings.model_repository, auto_complete_config=False)
            triton.supervise()
            settings = settings.model_copy(update={"triton_url": triton.grpc_url})
        app = create_app(settings)
        label = " (DEMO: not the official weights, not a result)" if settings.demo else ""
        log.info("open http://%s:%d/ in a browser%s", settings.host, settings.port, label)
        serve(app, settings, sock)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        if triton is not None:
            triton.stop()
    return 0
