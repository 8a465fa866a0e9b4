"""The repository writer: configs for both targets parse with Triton's schema and agree with the ONNX graphs.

No server here (tests/test_triton_serving.py loads the cpu repository into the real one); the gpu target cannot
run on this machine, so its configs are checked against Triton's model-config protobuf schema.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.__main__ import main
from export.engines import ENSEMBLES, STAGES, TENSORRT_FP32_MODELS
from export.repository import (
    GATEWAY_INFLIGHT_CALLS,
    GATEWAY_INFLIGHT_RENDERS,
    GATEWAY_MAX_SESSIONS,
    GATEWAY_PORTRAIT_PREPARATIONS,
    GENERATED_MARK,
    TENSORRT_OPTIONS,
    RepositorySettings,
    WrittenRepository,
    describe_markdown,
    tensorrt_precision,
    validate_ensemble,
    write_repository,
)
from export.triton_model import concatenate, group_by_row_shape, run_in_pieces, split

REPO_ROOT = Path(__file__).resolve().parent.parent
NP_OF_TRITON = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_UINT8": np.uint8}


@pytest.fixture(scope="module", params=["cpu", "gpu"], ids=["cpu-target", "gpu-target"])
def written(
    request: pytest.FixtureRequest, reduced_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> WrittenRepository:
    settings = RepositorySettings(target=request.param, preferred_batch_sizes=(4, 8))
    return write_repository(reduced_onnx_dir, tmp_path_factory.mktemp(f"repo_{request.param}"), settings)


def parse(config: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def configs(repository: WrittenRepository) -> dict[str, model_config_pb2.ModelConfig]:
    return {path.parent.name: parse(path) for path in sorted(repository.path.glob("*/config.pbtxt"))}


def test_every_stage_and_ensemble_is_written(written: WrittenRepository) -> None:
    assert set(written.models) == set(STAGES)
    assert set(written.ensembles) == set(ENSEMBLES)
    assert set(configs(written)) == set(STAGES) | set(ENSEMBLES)
    manifest = json.loads((written.path / "repository.json").read_text())
    assert manifest["weights"] == ["RANDOM (reduced architecture, seed 0) - not a result of the models"]
    models_md = (written.path / "MODELS.md").read_text()
    assert "RANDOM (reduced architecture" in models_md and describe_markdown() in models_md


def test_configs_parse_and_name_only_files_that_exist(written: WrittenRepository) -> None:
    target = json.loads((written.path / "repository.json").read_text())["target"]
    for name, config in configs(written).items():
        assert config.name == name
        model_dir = written.path / name
        assert (model_dir / "1").is_dir()
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                assert (written.path / step.model_name / "config.pbtxt").is_file(), step.model_name
            continue
        if target == "cpu":
            assert config.backend == "python"
            assert (model_dir / "1" / "model.py").read_bytes() == (REPO_ROOT / "export/triton_model.py").read_bytes()
            assert (model_dir / "1" / config.parameters["onnx_file"].string_value).is_file()
            rows = int(config.parameters["max_rows_per_run"].string_value)
            assert rows == RepositorySettings().cpu_rows_per_run > 0
        else:
            assert config.backend == "onnxruntime"
            assert (model_dir / "1" / config.default_model_filename).is_file()
        assert json.loads((model_dir / "1" / "model.json").read_text())["stage"] == name


def onnx_signature(path: Path) -> dict[str, tuple[str, type, list[int | str]]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    signature = {}
    for kind, values in (("in", graph.input), ("out", graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).type
            signature[value.name] = (kind, dtype, dims)
    return signature


def test_onnx_names_dtypes_and_dims_equal_the_config(written: WrittenRepository) -> None:
    for name, config in configs(written).items():
        if config.platform == "ensemble":
            continue
        graph = onnx_signature(written.path / name / "1" / "model.onnx")
        declared = [("in", t) for t in config.input] + [("out", t) for t in config.output]
        assert [t.name for _, t in declared] == list(graph), name  # same names, same order
        for kind, tensor in declared:
            graph_kind, dtype, dims = graph[tensor.name]
            assert graph_kind == kind and dtype == NP_OF_TRITON[model_config_pb2.DataType.Name(tensor.data_type)]
            config_dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            if config.max_batch_size > 0:
                assert dims[0] == "batch", (name, tensor.name)
                dims = dims[1:]
            # A fixed ONNX dim must be the config's; a symbolic one (a named axis, or one the exporter could not
            # infer) is variable, which the config may pin (audio2pose's 32 frames) or leave at -1.
            assert len(dims) == len(config_dims), (name, tensor.name)
            for graph_dim, config_dim in zip(dims, config_dims, strict=True):
                assert isinstance(graph_dim, str) or graph_dim == config_dim, (name, tensor.name, dims, config_dims)
                assert config_dim != -1 or isinstance(graph_dim, str), (name, tensor.name)


def test_batching_and_warmup(written: WrittenRepository) -> None:
    for name, config in configs(written).items():
        if config.platform == "ensemble":
            continue
        spec = STAGES[name]
        assert (config.max_batch_size > 0) == (name != "mel_windows"), name
        assert config.HasField("dynamic_batching") == spec.per_frame, name
        if spec.per_frame:
            assert config.max_batch_size == (spec.max_frames or 32), name
            assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
            assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 1
        assert set(warmup.inputs) == {t.name for t in config.input}
        for tensor in config.input:
            data = warmup.inputs[tensor.name]
            assert -1 not in data.dims
            assert data.zero_data if tensor.data_type == model_config_pb2.TYPE_INT64 else data.random_data


def test_every_batcher_queues_a_bounded_number_of_requests_and_refuses_the_rest(written: WrittenRepository) -> None:
    """Without a policy Triton's queues are unbounded; by default each holds the load of 4 gateways at their
    default limits: 8 sessions × 4 motion calls on audio2exp, 8 × 3 render calls on the render steps."""
    manifest = json.loads((written.path / "repository.json").read_text())["models"]
    bounds = {}
    for name, config in configs(written).items():
        if not config.HasField("dynamic_batching"):
            assert "max_queue_size" not in manifest.get(name, {}), name
            continue
        policy = config.dynamic_batching.default_queue_policy
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT, name
        assert manifest[name]["max_queue_size"] == policy.max_queue_size, name
        bounds[name] = policy.max_queue_size
    assert set(bounds) == {name for name, spec in STAGES.items() if spec.per_frame}
    assert bounds["audio2exp"] == 4 * 8 * 4 == 128
    assert bounds["mapping"] == 4 * (8 * 3 + 2)  # portrait preparations call it too
    assert {bounds[name] for name in bounds if name not in ("audio2exp", "mapping")} == {4 * 8 * 3}


def test_queue_bounds_are_sized_from_the_gateways_defaults() -> None:
    """The per-gateway load the bounds are made of is the gateway's own default limits."""
    from gateway.settings import Settings

    fields = Settings.model_fields
    assert fields["max_sessions"].default == GATEWAY_MAX_SESSIONS
    assert fields["max_inflight_calls"].default == GATEWAY_INFLIGHT_CALLS
    assert fields["max_inflight_renders"].default == GATEWAY_INFLIGHT_RENDERS
    assert fields["max_portrait_preparations"].default == GATEWAY_PORTRAIT_PREPARATIONS


def test_queue_bound_settings(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    one = write_repository(reduced_onnx_dir, tmp_path / "one", RepositorySettings(queue_gateways=1))
    sizes = {n: c.dynamic_batching.default_queue_policy.max_queue_size for n, c in configs(one).items()}
    assert (sizes["audio2exp"], sizes["generator"], sizes["mapping"]) == (32, 24, 26)
    fixed = write_repository(reduced_onnx_dir, tmp_path / "fixed", RepositorySettings(max_queue_size=5))
    parsed = configs(fixed)
    assert {
        c.dynamic_batching.default_queue_policy.max_queue_size
        for c in parsed.values()
        if c.HasField("dynamic_batching")
    } == {5}
    assert "queue holds at most 5 requests" in (tmp_path / "fixed" / "MODELS.md").read_text()
    for wrong in ({"max_queue_size": 0}, {"queue_gateways": 0}):
        with pytest.raises(ValueError, match="must be ≥ 1"):
            RepositorySettings(**wrong)  # type: ignore[arg-type]


def test_ensembles_have_the_designed_batch_semantics(written: WrittenRepository) -> None:
    parsed = configs(written)
    assert parsed["render"].max_batch_size == parsed["render_enhanced"].max_batch_size == 32
    assert parsed["avatar"].max_batch_size == 8
    # motion: one signal (batch 1) in, K frames out: no Triton batch axis, explicit dims.
    motion = parsed["motion"]
    assert motion.max_batch_size == 0
    assert {t.name: list(t.dims) for t in motion.input} == {
        "signal": [1, -1],
        "mel_index": [-1, 16],
        "ref_exp": [-1, 64],
        "ratio": [-1, 1],
    }
    assert [step.model_name for step in motion.ensemble_scheduling.step] == ["mel", "mel_windows", "audio2exp"]
    faces = {name: parsed[name].output[0] for name in ("render", "render_enhanced")}
    assert {name: (list(t.dims), t.data_type) for name, t in faces.items()} == {
        "render": ([256, 256, 3], model_config_pb2.TYPE_UINT8),
        "render_enhanced": ([512, 512, 3], model_config_pb2.TYPE_UINT8),
    }


def test_gpu_target_runs_networks_through_tensorrt_fp16_with_an_engine_cache(
    reduced_onnx_dir: Path, tmp_path: Path
) -> None:
    """fp16 for every network but the generator, whose sampling coordinates must stay fp32 (docs/gpu.md)."""
    repository = write_repository(reduced_onnx_dir, tmp_path, RepositorySettings(target="gpu", trt_cache_dir="/c"))
    parsed = configs(repository)
    for name, spec in STAGES.items():
        config = parsed[name]
        assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        if not spec.checkpoint:  # glue graphs and the mel front-end stay on CUDA in fp32
            assert not accelerators, name
            continue
        (tensorrt,) = accelerators
        assert tensorrt.name == "tensorrt"
        assert tensorrt.parameters["precision_mode"] == ("FP32" if name == "generator" else "FP16"), name
        assert set(tensorrt.parameters) <= TENSORRT_OPTIONS  # Triton refuses any other key
        assert tensorrt.parameters["trt_engine_cache_enable"] == "1"
        assert tensorrt.parameters["trt_engine_cache_path"] == f"/c/{name}"
    profile = parsed["generator"].optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    assert profile["trt_profile_max_shapes"] == "source_image:32x3x256x256,kp_source:32x15x3,kp_driving:32x15x3"
    assert profile["trt_profile_opt_shapes"].startswith("source_image:8x3x256x256")


def precisions(repository: WrittenRepository) -> dict[str, str]:
    return {
        name: config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"]
        for name, config in configs(repository).items()
        if config.optimization.execution_accelerators.gpu_execution_accelerator
    }


def test_gpu_target_precision_switches(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    networks = {name for name, spec in STAGES.items() if spec.checkpoint}
    fast = write_repository(reduced_onnx_dir, tmp_path / "fast", RepositorySettings(target="gpu", fp16_generator=True))
    assert precisions(fast) == dict.fromkeys(networks, "FP16")
    exact = write_repository(reduced_onnx_dir, tmp_path / "exact", RepositorySettings(target="gpu", fp16=False))
    assert precisions(exact) == dict.fromkeys(networks, "FP32")
    assert set(TENSORRT_FP32_MODELS) == {"generator"}
    assert tensorrt_precision(STAGES["generator"], RepositorySettings(target="gpu")) == "FP32"
    assert tensorrt_precision(STAGES["gfpgan"], RepositorySettings(target="gpu")) == "FP16"


def test_ensemble_validation_catches_a_broken_mapping() -> None:
    for ensemble in ENSEMBLES.values():
        validate_ensemble(ensemble)
    render = ENSEMBLES["render"]
    generator_step = dataclasses.replace(
        render.steps[1], inputs=(("source_image", "source_image"), ("kp_source", "kp_source"))
    )
    with pytest.raises(ValueError, match="generator inputs"):
        validate_ensemble(dataclasses.replace(render, steps=(render.steps[0], generator_step, render.steps[2])))
    wrong_type = dataclasses.replace(render.steps[0], inputs=(("window", "face"), ("kp_canonical", "kp_canonical")))
    with pytest.raises(ValueError, match="before it is produced"):
        validate_ensemble(dataclasses.replace(render, steps=(wrong_type, *render.steps[1:])))
    # An output named like an input (Triton refuses to load such an ensemble: one tensor, two types).
    clash = dataclasses.replace(render.steps[2], outputs=(("face", "window"),))
    with pytest.raises(ValueError, match="produced twice"):
        validate_ensemble(dataclasses.replace(render, steps=(*render.steps[:2], clash)))


def test_missing_graph_leaves_out_what_needs_it(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(reduced_onnx_dir, onnx_dir)
    for suffix in (".onnx", ".json"):
        (onnx_dir / f"gfpgan{suffix}").unlink()
    repository = write_repository(onnx_dir, tmp_path / "repo")
    assert "gfpgan" not in repository.models
    assert set(repository.ensembles) == {"avatar", "motion", "render", "wav2lip_render"}
    assert set(repository.skipped) == {"gfpgan", "render_enhanced", "wav2lip_render_enhanced"}
    assert not (tmp_path / "repo" / "render_enhanced").exists()


def test_a_graph_exported_from_other_specs_is_refused(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(reduced_onnx_dir, onnx_dir)
    sidecar = json.loads((onnx_dir / "mapping.json").read_text())
    sidecar["inputs"][0]["name"] = "coefficients"
    (onnx_dir / "mapping.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="export it again"):
        write_repository(onnx_dir, tmp_path / "repo")


def test_regenerating_replaces_its_models_and_keeps_foreign_ones(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    write_repository(reduced_onnx_dir, tmp_path, RepositorySettings(target="gpu"))
    foreign = tmp_path / "my_model" / "config.pbtxt"
    foreign.parent.mkdir()
    foreign.write_text('name: "my_model"\n')
    write_repository(reduced_onnx_dir, tmp_path, RepositorySettings(target="cpu"))
    assert foreign.read_text() == 'name: "my_model"\n'
    text = (tmp_path / "generator" / "config.pbtxt").read_text()
    assert text.startswith(GENERATED_MARK) and 'backend: "python"' in text
    assert (tmp_path / "generator" / "1" / "model.py").is_file()


def test_cli_writes_the_gpu_repository(reduced_onnx_dir: Path, tmp_path: Path) -> None:
    argv = ["repository", "--target", "gpu", "--onnx", str(reduced_onnx_dir), "--out", str(tmp_path / "repo")]
    assert main([*argv, "--max-queue-delay-us", "500", "--instances", "2"]) == 0
    generator = parse(tmp_path / "repo" / "generator" / "config.pbtxt")
    assert generator.dynamic_batching.max_queue_delay_microseconds == 500
    assert generator.instance_group[0].count == 2
    assert precisions(WrittenRepository(tmp_path / "repo", (), (), {}))["generator"] == "FP32"
    assert main([*argv, "--fp16-generator"]) == 0
    assert precisions(WrittenRepository(tmp_path / "repo", (), (), {}))["generator"] == "FP16"
    assert main(["repository", "--onnx", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert main([*argv, "--max-batch-size", "4", "--preferred-batch-sizes", "8"]) == 1  # 8 > max batch 4
    assert main([*argv, "--max-queue-size", "7"]) == 0
    assert (
        parse(tmp_path / "repo" / "generator" / "config.pbtxt").dynamic_batching.default_queue_policy.max_queue_size
        == 7
    )
    assert main([*argv, "--queue-gateways", "2"]) == 0
    audio2exp = parse(tmp_path / "repo" / "audio2exp" / "config.pbtxt")
    assert audio2exp.dynamic_batching.default_queue_policy.max_queue_size == 2 * 32
    assert main([*argv, "--max-queue-size", "0"]) == 1


def test_docs_describe_every_model_and_ensemble() -> None:
    """docs/models.md carries the generated tables verbatim, so the docs cannot drift from the specs."""
    assert describe_markdown() in (REPO_ROOT / "docs" / "models.md").read_text()


def test_model_source_runs_many_rows_in_pieces_with_the_same_result() -> None:
    runs: list[int] = []

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(len(feed["x"]))
        return [feed["x"] * 2 + feed["y"], feed["y"].sum(axis=1)]

    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((10, 3)), "y": rng.standard_normal((10, 3))}
    whole = run_in_pieces(run, feed, 0)
    pieces = run_in_pieces(run, feed, 4)
    assert runs == [10, 4, 4, 2]
    for a, b in zip(whole, pieces, strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_source_batches_by_row_shape_and_splits_back() -> None:
    a = {"x": np.zeros((2, 3)), "y": np.zeros((2, 1))}
    b = {"x": np.ones((1, 3)), "y": np.ones((1, 1))}
    c = {"x": np.ones((4, 5)), "y": np.ones((4, 1))}
    groups = group_by_row_shape([(0, a), (1, b), (2, c)], batched=True)
    assert [[position for position, _ in group] for group in groups] == [[0, 1], [2]]
    assert [len(group) for group in group_by_row_shape([(0, a), (1, b)], batched=False)] == [1, 1]
    feed, rows = concatenate([a, b])
    assert rows == [2, 1] and feed["x"].shape == (3, 3)
    parts = split([feed["x"] * 2], rows)
    np.testing.assert_array_equal(parts[1][0], np.full((1, 3), 2.0))
    with pytest.raises(RuntimeError, match="rows"):
        split([np.zeros((4, 3))], rows)


def test_engine_exports_are_checked_when_registered() -> None:
    """A name two engines share would be one Triton model; a rule about a stage its engine does not declare
    would silently apply to nothing."""
    from export.engines import EXPORTS, check_exports
    from export.specs import EngineExport

    check_exports(EXPORTS)
    first = EXPORTS[0]
    clash = EngineExport("clash", stages=first.stages[:1], builders="nowhere")
    with pytest.raises(ValueError, match=f"named twice across engines: {first.stages[0].name}"):
        check_exports([*EXPORTS, clash])
    stray = EngineExport("stray", stages=(), builders="nowhere", tensorrt_fp32={"generator": "why"})
    with pytest.raises(ValueError, match="stray describes stages it does not declare: generator"):
        check_exports([stray])
