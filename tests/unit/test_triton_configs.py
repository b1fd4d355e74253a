"""camstream.modelrepo.triton_config: the CPU and GPU Triton configs of one exported model.

Both are read as Triton reads them (its ModelConfig protobuf, from tritonclient) and held
to the real exported graph (triton_repo's model.onnx, read with onnx in the model
environment), and the GPU one to what docker-compose.yml mounts and passes to Triton.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from camstream import modelrepo
from camstream.errors import ConfigError
from camstream.modelrepo import Target
from camstream.settings import REPO_ROOT
from camstream.stack.triton import locate_model_env

REPO = REPO_ROOT / "triton_repo"
MODEL = "efficientnet_lite0"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# Run in the model environment (the only one with onnx): the graph's inputs and outputs.
_SIGNATURE = """
import json, sys, onnx
graph = onnx.load(sys.argv[1], load_external_data=False).graph
def tensor(v):
    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type), "dims": dims}
print(json.dumps({"inputs": [tensor(v) for v in graph.input],
                  "outputs": [tensor(v) for v in graph.output]}))
"""
# ONNX element types as Triton's config names them.
_ONNX_TO_TRITON = {"UINT8": "TYPE_UINT8", "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16"}


@pytest.fixture(scope="module")
def graph() -> dict[str, list[dict[str, Any]]]:
    """The exported model.onnx's inputs and outputs (name, ONNX dtype, dims; -1 dynamic)."""
    onnx_file = modelrepo.onnx_path(REPO, MODEL)
    assert onnx_file.is_file(), f"{onnx_file} is missing: run `camstream setup` (it exports)"
    python = locate_model_env().bin_dir / "python"
    result = subprocess.run(
        [str(python), "-c", _SIGNATURE, str(onnx_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    signature: dict[str, list[dict[str, Any]]] = json.loads(result.stdout)
    return signature


def parse(text: str) -> mc.ModelConfig:
    """A config.pbtxt as Triton parses it: an unknown field or a typo fails here."""
    return text_format.Parse(text, mc.ModelConfig())


def committed(target: Target) -> mc.ModelConfig:
    return parse(modelrepo.config_path(REPO, MODEL, target).read_text())


def without_policy(config: mc.ModelConfig) -> mc.ModelConfig:
    """The config less its version_policy, which rollouts rewrite in place."""
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    copy.ClearField("version_policy")
    return copy


def tensors(config: mc.ModelConfig, kind: str) -> list[dict[str, Any]]:
    """The config's inputs or outputs as the graph sees them: the batch dimension first
    (-1, dynamic) when Triton batches, the dtype in ONNX's names."""
    batch = [-1] if config.max_batch_size > 0 else []
    return [
        {
            "name": t.name,
            "dtype": mc.DataType.Name(t.data_type),
            "dims": batch + list(t.dims),
        }
        for t in getattr(config, kind)
    ]


def _configs() -> list[tuple[str, Target, str]]:
    """(what, target, text): the generated configs and the committed ones."""
    return [
        ("generated", Target.CPU, modelrepo.triton_config(MODEL, Target.CPU, 1000)),
        ("generated", Target.GPU, modelrepo.triton_config(MODEL, Target.GPU, 1000)),
        ("generated for promote", Target.CPU, modelrepo.model_config(MODEL)),
        *[("committed", t, modelrepo.config_path(REPO, MODEL, t).read_text()) for t in Target],
    ]


@pytest.mark.parametrize(("what", "target", "text"), _configs(), ids=lambda v: str(v)[:24])
def test_each_targets_config_matches_the_exported_graphs_inputs_and_outputs(
    graph: dict[str, list[dict[str, Any]]], what: str, target: Target, text: str
) -> None:
    # Given a target's config and the real exported graph
    config = parse(text)
    # Then the config's tensors are the graph's: names, dtypes, and dims (-1 in the
    # config only where the CPU target's python backend takes what onnxruntime returns)
    for kind in ("input", "output"):
        want = graph[f"{kind}s"]
        got = tensors(config, kind)
        assert [t["name"] for t in got] == [t["name"] for t in want], (what, kind)
        for ours, theirs in zip(got, want, strict=True):
            assert ours["dtype"] == _ONNX_TO_TRITON[theirs["dtype"]], (what, ours)
            assert len(ours["dims"]) == len(theirs["dims"]), (what, ours, theirs)
            for mine, real in zip(ours["dims"], theirs["dims"], strict=True):
                loose = target is Target.CPU and mine == -1
                assert mine == real or loose, (what, kind, ours["dims"], theirs["dims"])
    # And the input stays what camstream sends: uint8 NHWC 224x224x3, no preprocessing
    assert list(config.input[0].dims) == [224, 224, 3]


def test_the_committed_gpu_config_is_the_generators_output_byte_for_byte() -> None:
    # Given the GPU config docker-compose's Triton reads
    path = modelrepo.config_path(REPO, MODEL, Target.GPU)
    text = path.read_text()
    # When its version_policy (a rollout's to write) is set aside
    span = modelrepo._top_level_field(text, "version_policy")
    if span is not None:
        text = text[: span[0]].rstrip("\n").removesuffix(_POLICY_NOTE).rstrip("\n") + "\n"
    # Then it is exactly what the generator writes: regenerate it, never hand-edit it
    assert text == modelrepo.triton_config(MODEL, Target.GPU, 1000), (
        f"{path} differs from modelrepo.triton_config(): regenerate it"
    )


_POLICY_NOTE = "# Versions loaded, kept by `camstream promote` / `rollback` (rollout.py)."


def test_the_committed_cpu_config_is_the_generators_but_for_its_measured_comments() -> None:
    # Given the hand-commented CPU config and the generator's, read as Triton reads them
    # Then they configure the same thing
    assert without_policy(committed(Target.CPU)) == parse(
        modelrepo.triton_config(MODEL, Target.CPU, 1000)
    )


def test_gpu_config_runs_tensorrt_fp16_on_the_gpu_with_larger_preferred_batches() -> None:
    gpu, cpu = committed(Target.GPU), committed(Target.CPU)
    # Triton's own onnxruntime backend, on GPU instances
    assert gpu.backend == "onnxruntime" and cpu.backend == "python"
    assert {g.kind for g in gpu.instance_group} == {mc.ModelInstanceGroup.KIND_GPU}
    # TensorRT in FP16, caching its engines
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_engine_cache_path"].startswith(modelrepo.TRT_CACHE_DIR)
    # Larger batches than the CPU's, preferred sizes within them, a bounded queue delay
    assert gpu.max_batch_size == 128 > cpu.max_batch_size
    preferred = list(gpu.dynamic_batching.preferred_batch_size)
    assert preferred == sorted(preferred) and preferred[-1] == gpu.max_batch_size
    assert 0 < gpu.dynamic_batching.max_queue_delay_microseconds <= 5000
    # Warm-up at batch 1 and at the largest batch: the engine covers the range at load
    assert sorted(w.batch_size for w in gpu.model_warmup) == [1, gpu.max_batch_size]
    # The same labels file names the classes
    assert gpu.output[0].label_filename == cpu.output[0].label_filename == "labels.txt"


def test_gpu_config_needs_the_number_of_classes() -> None:
    with pytest.raises(ConfigError, match="number of classes"):
        modelrepo.triton_config(MODEL, Target.GPU)


# docker-compose.yml: the GPU Triton serves configs/gpu.pbtxt ----------------------------


def _triton_service() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["triton"]
    return service


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in command if "=" in arg)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) of a service's short-form volumes."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def test_docker_compose_triton_serves_the_gpu_config_of_every_model() -> None:
    # Given the compose file's Triton: its command and its mounts
    service = _triton_service()
    flags = _flags(service["command"])
    mounts = _mounts(service)
    # When the host folder of its model repository is found
    source, read_only = mounts[flags["model-repository"]]
    host_repo = (COMPOSE_FILE.parent / source).resolve()
    # Then Triton picks the GPU config of each model there ...
    assert flags["model-config-name"] == Target.GPU.value
    assert host_repo == REPO.resolve() and read_only
    models = modelrepo.list_models(host_repo)
    assert models, f"no model in {host_repo}"
    for model in models:
        name = f"{flags['model-config-name']}.pbtxt"
        served = host_repo / model.name / modelrepo.CUSTOM_CONFIGS_DIR / name
        assert served == modelrepo.config_path(host_repo, model.name, Target.GPU)
        assert served.is_file(), f"{served} is missing: docker-compose would serve the CPU config"
        config = parse(served.read_text())
        assert config.backend == "onnxruntime", served
        # ... and TensorRT's engine cache lies on a writable mount
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        cache = Path(accelerator.parameters["trt_engine_cache_path"])
        writable = [Path(t) for t, (_, ro) in mounts.items() if not ro]
        assert any(cache.is_relative_to(w) for w in writable), (cache, mounts)
