"""int8 graphs for CPU serving: ONNX Runtime's static quantization, checked against the fp32 graph.

An engine meant to run live on a CPU may declare an int8 form for a stage (``EngineExport.int8``: why, and
how to make calibration inputs). Wav2Lip's is the one now: at fp32, ≈ 7.9 GFLOP per frame at 25 frames per
second is ≈ 200 GFLOP/s, more than ONNX Runtime's fp32 convolutions reach on two cores
(docs/measurements.md); its convolutions in int8 (VNNI's u8×s8 dot products) run ≈ 1.6× faster there.

Static QDQ quantization: weights per output channel in int8, activations in uint8 with ranges measured on
calibration inputs (min–max). The graph keeps the fp32 graph's inputs and outputs, so the served model, its
config and its ensembles are unchanged; only ``model.onnx`` differs. Every quantized graph is compared with its
fp32 graph on held-out inputs and refused when the error passes :data:`INT8_TOLERANCE`; the measured error is
recorded in its sidecar.

The ranges are only as good as the calibration inputs: by default the form's synthetic ones (for Wav2Lip, mel
windows of a synthetic voice through the real front-end, and smooth random faces);
``--calibration-audio SPEECH --calibration-faces FACES.npz`` builds them from real speech and real faces as a
session does (Wav2Lip's face inputs come from the gateway's face finder:
``python -m gateway.engines.wav2lip.calibration PHOTO… --out FACES.npz``), and ``--calibration FILE.npz``
takes the model's own inputs (one array per input name).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from export.engines import QUANTIZABLE, STAGES
from export.specs import Int8Form

log = logging.getLogger(__name__)

# The int8 output's error against fp32 that an export refuses to pass, relative to how much the fp32 output
# varies (:func:`variation_error`; measured ≈ 0.04 for full-size Wav2Lip with synthetic weights).
INT8_TOLERANCE = 0.1
CALIBRATION_ROWS = 32
CHECK_ROWS = 16


def int8_graph(onnx_dir: Path, stage: str) -> Path:
    """Where the int8 form of ``onnx_dir/<stage>.onnx`` lives (its sidecar beside it, ``.int8.json``)."""
    return Path(onnx_dir) / f"{stage}.int8.onnx"


def int8_is_current(onnx_dir: Path, stage: str) -> bool:
    """Whether ``<stage>.int8.onnx`` exists and was made from the fp32 graph that is there now."""
    sidecar, source = int8_graph(onnx_dir, stage).with_suffix(".json"), Path(onnx_dir) / f"{stage}.json"
    if not (int8_graph(onnx_dir, stage).is_file() and sidecar.is_file() and source.is_file()):
        return False
    made_from = json.loads(sidecar.read_text()).get("source_sha256")
    return made_from is not None and made_from == json.loads(source.read_text()).get("sha256")


def int8_form(stage: str) -> Int8Form:
    if stage not in QUANTIZABLE:
        raise ValueError(f"{stage} has no int8 form (these do: {', '.join(QUANTIZABLE)})")
    return QUANTIZABLE[stage]


def synthetic_inputs(stage: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs for ``stage`` that look like what it is served: the default calibration and check data."""
    return int8_form(stage).synthetic_inputs(rows, seed)


def load_faces(path: Path, stage: str) -> np.ndarray:
    """The face inputs float32 of ``stage`` (N rows of its int8 form's face input) from an ``.npz`` with an array
    ``face`` (for Wav2Lip, as ``python -m gateway.engines.wav2lip.calibration`` writes it)."""
    want = next(t.shape[1:] for t in STAGES[stage].inputs if t.name == int8_form(stage).face_input)
    with np.load(path) as data:
        if "face" not in data.files:
            raise ValueError(f"{path} has no array `face` (it has {data.files})")
        faces = np.asarray(data["face"], dtype=np.float32)
    if faces.shape[1:] != want or len(faces) == 0:
        raise ValueError(f"{path}: faces of shape {faces.shape}, not (N ≥ 1, {', '.join(map(str, want))})")
    return faces


def calibration_from_media(
    stage: str, audio: Path, faces: np.ndarray, rows: int = 4 * CALIBRATION_ROWS
) -> dict[str, np.ndarray]:
    """Inputs for ``stage`` from real speech and real faces, built as a session builds them: the mel windows of
    ``rows`` frames spread over the recording, each with one of the faces in turn."""
    form = int8_form(stage)
    if form.media_inputs is None:
        raise ValueError(f"no calibration from media for {stage!r}")
    return form.media_inputs(Path(audio), faces, rows)


def load_calibration(path: Path, stage: str) -> dict[str, np.ndarray]:
    """The model's own inputs from an ``.npz`` (one array per input name, rows on the first axis)."""
    spec = STAGES[stage]
    with np.load(path) as data:
        missing = [t.name for t in spec.inputs if t.name not in data.files]
        if missing:
            raise ValueError(f"{path} lacks the input(s) {missing} of {stage} (it has {data.files})")
        arrays = {t.name: np.ascontiguousarray(data[t.name], dtype=np.float32) for t in spec.inputs}
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise ValueError(f"{path}: the inputs have different numbers of rows {sorted(rows)}")
    return arrays


class _Reader:
    """ONNX Runtime's calibration protocol: ``get_next`` gives input feeds until None."""

    def __init__(self, inputs: Mapping[str, np.ndarray], batch: int) -> None:
        rows = next(iter(inputs.values())).shape[0]
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{name: a[i : i + batch] for name, a in inputs.items()} for i in range(0, rows, batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # some calibrators ask for it; one pass is all min–max needs
        pass


def variation_error(have: np.ndarray, want: np.ndarray) -> float:
    """‖have − want‖ / ‖want − mean(want)‖: the error against the output's variation around its mean.

    Plain relative L2 flatters a sigmoid output that sits near 0.5 (a calibration that misses every range
    still scores ≈ 0.01 on it); against the variation, the same miss scores ≈ 8× a good calibration.
    """
    want64 = want.astype(np.float64)
    spread = float(np.linalg.norm(want64 - want64.mean()))
    return float(np.linalg.norm(have.astype(np.float64) - want64)) / max(spread, 1e-12)


def _run(graph: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, dict(inputs))[0])


def _run_openvino(graph: Path, stage: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The stage's first output under OpenVINO, run as the cpu repository runs it; None where OpenVINO is not
    installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    from export.triton_model import OpenVinoRunner

    return OpenVinoRunner(graph, 0, [STAGES[stage].outputs[0].name]).run(dict(inputs))[0]


def quantize_stage(
    onnx_dir: Path,
    stage: str,
    calibration: Mapping[str, np.ndarray] | None = None,
    *,
    described: str = "the given inputs",
    seed: int = 0,
    reduce_range: bool = True,
) -> dict[str, Any]:
    """Write ``<stage>.int8.onnx`` (+ sidecar) from ``<stage>.onnx``; return the sidecar. ValueError when the
    int8 graph is further from fp32 than :data:`INT8_TOLERANCE` on held-out inputs (then nothing is written).

    ``reduce_range=False`` (weights in 8 bits) is for studies (bench/int8_isa.py): a graph made so may saturate
    where it is served without VNNI."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_form(stage)
    onnx_dir = Path(onnx_dir)
    source = onnx_dir / f"{stage}.onnx"
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist: export it first (`python -m export onnx`)")
    if calibration is None:
        described = "synthetic voice and smooth random faces"
    calibration = calibration if calibration is not None else synthetic_inputs(stage, CALIBRATION_ROWS, seed)
    held_out = synthetic_inputs(stage, CHECK_ROWS, seed + 1)
    target = int8_graph(onnx_dir, stage)
    # Scratch beside the target: the finished graph is renamed into place (atomic on one file system).
    with tempfile.TemporaryDirectory(dir=onnx_dir, prefix=".quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "int8.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _Reader(calibration, batch=4),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Weights in 7 bits: on CPUs without VNNI (AVX2) ONNX Runtime's u8×s8 kernels add pairs of products in
            # 16 bits, which full-range weights can saturate; a graph made here may be served on any x86-64.
            # Measured at full size: 0.044 of the output's variation from fp32 (0.040 with 8 bits), ≤ 5.6/255;
            # on AVX2 kernels (bench/int8_isa.py) see docs/measurements.md.
            reduce_range=reduce_range,
        )
        want, have = _run(source, held_out), _run(quantized, held_out)
        error = variation_error(have, want)
        levels = float(np.abs(have.astype(np.float64) - want).max() * 255)
        # The cpu repository may run the graph in OpenVINO (its own int8 kernels): checked the same way.
        openvino_have = _run_openvino(quantized, stage, held_out)
        openvino_error = None if openvino_have is None else variation_error(openvino_have, want)
        for runtime, off in (("ONNX Runtime", error), ("OpenVINO", openvino_error)):
            if off is not None and not off <= INT8_TOLERANCE:
                raise ValueError(
                    f"{stage} in int8 ({runtime}) is off by {off:.3g} of its output's variation from fp32, over "
                    f"the {INT8_TOLERANCE} allowed: calibrate with real inputs (--calibration) or serve it in fp32"
                )
        quantized.replace(target)
    sidecar: dict[str, Any] = json.loads(source.with_suffix(".json").read_text())
    sidecar.update(
        source_sha256=sidecar.get("sha256"),  # the fp32 graph it was made from (int8_is_current)
        sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
        precision=(
            f"int8: static QDQ, weights int8 per channel in a {7 if reduce_range else 8}-bit range, activations uint8 "
            "(min–max ranges)"
        ),
        calibration=f"{next(iter(calibration.values())).shape[0]} rows of {described}",
        int8_error={
            "relative_to_variation": error,
            "max_abs_255": levels,
            "tolerance": INT8_TOLERANCE,
            "inputs": f"{CHECK_ROWS} held-out synthetic rows",
            "openvino_relative_to_variation": openvino_error,  # None: OpenVINO was not installed to check
        },
    )
    sidecar.pop("parity", None)  # parity was the fp32 graph's against PyTorch
    target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("%s: int8 graph %s, off by %.3g of the variation (max %.1f/255)", stage, target.name, error, levels)
    return sidecar
