"""The Triton model repository as camstream reads and writes it: one layout, one place.

    <repo>/<model>/config.pbtxt            Triton's configuration (names, batching) and
                                           its version_policy: the versions in use; the
                                           CPU target's (python backend + onnxruntime)
    <repo>/<model>/configs/gpu.pbtxt       the GPU target's (onnxruntime backend +
                                           TensorRT FP16), same tensors and policy: Triton
                                           reads it with --model-config-name=gpu
    <repo>/<model>/serving.json            {"version": N}: the model's default version,
                                           answering for cameras that name no version
    <repo>/<model>/labels.txt              class names, one a line; the first synonym
                                           before a comma is the label
    <repo>/<model>/reference_profile.json  the drift reference profile
    <repo>/<model>/<version>/model.onnx    one version: a positive integer folder name
    <repo>/<model>/<version>/model.py      the python-backend model that serves it
    <repo>/<model>/<version>/labels.txt    that version's own labels and drift profile,
    <repo>/<model>/<version>/reference_profile.json   when it has them (registry versions)

A version's own labels and profile win over the model-level ones, which belong to the
champion last installed (Triton's ``label_filename`` names the model-level file).

Triton runs in explicit model-control mode: it loads what each config's
``version_policy`` names, at start and at each ``load_model``; a rollout
(camstream.rollout) edits the policy and serving.json here and then asks Triton to load.

Every exported model takes ``IMAGE`` (RGB uint8 [N, 224, 224, 3]) and returns ``PROBS``
(float32 softmax over its labels), so any model can serve any camera.

Standard library only: the model environment (training.export, training.baseline)
imports it as well as the application.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from camstream.errors import ConfigError

IMAGE = "IMAGE"
PROBS = "PROBS"

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
REFERENCE_PROFILE_FILE = "reference_profile.json"
ONNX_FILE = "model.onnx"
MODEL_PY_FILE = "model.py"


@dataclass(frozen=True)
class ModelEntry:
    """One model of a repository and its versions, oldest first."""

    name: str
    path: Path
    versions: tuple[int, ...]

    @property
    def latest(self) -> int | None:
        return self.versions[-1] if self.versions else None


def _version_number(name: str) -> int | None:
    """A version folder's number; None for a name Triton ignores (not a positive
    integer, or one with a leading zero)."""
    if not (name.isascii() and name.isdigit()) or name.startswith("0"):
        return None
    return int(name)


def version_number(text: str) -> int | None:
    """``text`` as a version number; None for "" or a name Triton ignores."""
    return _version_number(text)


def model_versions(model_dir: Path) -> tuple[int, ...]:
    """The numeric version folders of one model, ascending; () when there are none."""
    if not model_dir.is_dir():
        return ()
    numbers = (_version_number(p.name) for p in model_dir.iterdir() if p.is_dir())
    return tuple(sorted(n for n in numbers if n is not None))


def list_models(repo: Path) -> list[ModelEntry]:
    """Every model in ``repo`` (a folder with a config.pbtxt or a version folder), by name."""
    if not repo.is_dir():
        return []
    models = []
    for path in sorted(repo.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        versions = model_versions(path)
        if versions or (path / CONFIG_FILE).is_file():
            models.append(ModelEntry(path.name, path, versions))
    return models


def model_dir(repo: Path, model: str) -> Path:
    return repo / model


def labels_path(repo: Path, model: str, version: str | int | None = None) -> Path:
    """The labels of ``version`` when it has its own, else the model's."""
    return _version_or_model_file(repo, model, version, LABELS_FILE)


def reference_profile_path(repo: Path, model: str, version: str | int | None = None) -> Path:
    """The drift reference profile of ``version`` when it has its own, else the model's."""
    return _version_or_model_file(repo, model, version, REFERENCE_PROFILE_FILE)


def _version_or_model_file(repo: Path, model: str, version: str | int | None, name: str) -> Path:
    if version is not None and str(version) != "":
        own = repo / model / str(version) / name
        if own.is_file():
            return own
    return repo / model / name


def served_version(repo: Path, model: str, version: str | int = "") -> int | None:
    """The version Triton serves (``version``, else the latest), or None when there is
    no such version: for callers that fall back to the model-level files."""
    try:
        return resolve_version(repo, model, version)
    except ConfigError:
        return None


def resolve_version(repo: Path, model: str, version: str | int = "") -> int:
    """The version to use: ``version`` when given (it must exist), else the latest.

    Raises ConfigError naming the model and what exists when there is no such version.
    """
    versions = model_versions(repo / model)
    if version == "":
        if not versions:
            raise ConfigError(
                f"model {model} has no version in {repo}: run `camstream setup` (it exports "
                "the model), or point CAMSTREAM_MODEL_REPO at a repository that has one"
            )
        return versions[-1]
    number = _version_number(str(version))
    if number is None:
        raise ConfigError(
            f"model version {version!r} is not a positive integer; fix CAMSTREAM_MODEL_VERSION"
        )
    if number not in versions:
        raise ConfigError(
            f"model {model} has no version {number} in {repo} (it has {list(versions)}); "
            "fix CAMSTREAM_MODEL_VERSION or leave it empty for the latest"
        )
    return number


def version_dir(repo: Path, model: str, version: str | int = "") -> Path:
    """The folder of one version of ``model`` (the latest when ``version`` is empty)."""
    return repo / model / str(resolve_version(repo, model, version))


def onnx_path(repo: Path, model: str, version: str | int = "") -> Path:
    """The ONNX file of one version of ``model`` (the latest when ``version`` is empty)."""
    return version_dir(repo, model, version) / ONNX_FILE


def parse_labels(text: str) -> list[str]:
    """Class names from a labels file's text: one a line, blank lines skipped, the first
    comma-separated synonym kept (ImageNet's ``tench, Tinca tinca`` -> ``tench``)."""
    return [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]


def read_labels(path: Path) -> list[str]:
    """The class names of a labels file; ConfigError with the fix when it is missing."""
    if not path.is_file():
        raise ConfigError(
            f"labels file {path} is missing: run `camstream setup` (it exports the model), "
            "or fix CAMSTREAM_MODEL_REPO / CAMSTREAM_MODEL_NAME"
        )
    return parse_labels(path.read_text())


# Installing a version --------------------------------------------------------------

# Serving targets: one exported model.onnx, one Triton config per kind of machine. ------


class Target(StrEnum):
    """Where a model is served, which decides its Triton config (``triton_config``).

    ``cpu``: the python backend running onnxruntime (model.py): the nvidia-pytriton
    wheel's server, which `camstream up` runs, carries no other backend.
    ``gpu``: Triton's own onnxruntime backend on the GPU with the TensorRT accelerator in
    FP16, as the NGC tritonserver image in docker-compose.yml serves it.
    """

    CPU = "cpu"
    GPU = "gpu"


# Triton picks ``<model>/configs/<name>.pbtxt`` over config.pbtxt when started with
# ``--model-config-name=<name>`` (docker-compose.yml does, with "gpu"), so both targets
# serve the same version folders, labels and version_policy from one repository.
CUSTOM_CONFIGS_DIR = "configs"
GPU_CONFIG_FILE = f"{CUSTOM_CONFIGS_DIR}/{Target.GPU.value}.pbtxt"

# Where the GPU server keeps its TensorRT engines (a volume in docker-compose.yml):
# building them takes minutes, so a restart should find them built. One folder for all
# models: onnxruntime names each engine by a hash of its model file's path and graph.
TRT_CACHE_DIR = "/var/cache/camstream-trt"


def config_path(repo: Path, model: str, target: Target) -> Path:
    """The file holding ``model``'s Triton config for ``target``."""
    name = CONFIG_FILE if target is Target.CPU else GPU_CONFIG_FILE
    return repo / model / name


# Both targets' input and output: uint8 NHWC in, softmax probabilities over the
# classes of labels.txt (the champion's, in its order) out. A template for str.format.
_IO = """\
input [
  {{
    name: "{image}"
    data_type: TYPE_UINT8
    dims: [ 224, 224, 3 ]
  }}
]

output [
  {{
    name: "{probs}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "{labels}"
  }}
]
"""


def _warmup(*batches: int) -> str:
    """A model_warmup field (template text) of zero batches of these sizes."""
    entry = """\
  {{
    name: "zeros_batch_%d"
    batch_size: %d
    inputs {{
      key: "{image}"
      value: {{
        data_type: TYPE_UINT8
        dims: [ 224, 224, 3 ]
        zero_data: true
      }}
    }}
  }}"""
    return "model_warmup [\n" + ",\n".join(entry % (b, b) for b in batches) + "\n]\n"


# The CPU config: the shape of efficientnet_lite0's config.pbtxt (its comments hold the
# measurements behind each setting). model.py reads every name and number from here.
CONFIG_TEMPLATE = (
    """\
# Written by camstream.modelrepo.triton_config(target=cpu): the python backend running
# onnxruntime on each version's model.onnx, like efficientnet_lite0 (whose config.pbtxt
# gives the measured reasons for batching, instances and threads).
name: "{name}"
backend: "python"
max_batch_size: 32

"""
    + _IO
    + """
dynamic_batching {{
  max_queue_delay_microseconds: 100
}}

instance_group [
  {{
    count: 2
    kind: KIND_CPU
  }}
]

parameters {{
  key: "ORT_INTRA_OP_THREADS"
  value: {{ string_value: "1" }}
}}

"""
    + _warmup(4)
)

# The GPU config, for the same model.onnx (IMAGE uint8 NHWC in, PROBS out: no
# preprocessing moves out of the graph).
#
# NOT MEASURED: no GPU was lent to the session that wrote this, so the preferred batch
# sizes, the queue delay, the instance count and max_batch_size were not swept. They are
# reasoned starting points, not figures: preferred sizes at the top of the range so the
# GPU runs full batches (Triton's dynamic batcher forms the largest preferred size it
# can); a 1 ms queue delay, small next to the 25 ms p99 goal; two instances, Triton's
# usual way to overlap one batch's copies with another's compute. Sweep them on a GPU
# with `camstream bench triton --address HOST:8001 --batch 1,8,32,64 --concurrency
# 8,32,64,128` and write the measured reasons here, as efficientnet_lite0's CPU
# config.pbtxt does.
GPU_CONFIG_TEMPLATE = (
    """\
# Written by camstream.modelrepo.triton_config(target=gpu); served when Triton runs with
# --model-config-name=gpu (docker-compose.yml). Triton's onnxruntime backend on the GPU,
# with TensorRT in FP16 running the graph, from the same model.onnx as the CPU config.
#
# NOT MEASURED: no GPU was available where this was written. The preferred batch sizes,
# the queue delay, max_batch_size and the instance count are reasoned starting points,
# not the result of a sweep: sweep them on the GPU with `camstream bench triton
# --address HOST:8001` and record the figures here (camstream.modelrepo's comment says
# why each was chosen).
name: "{name}"
backend: "onnxruntime"
max_batch_size: 128

"""
    + _IO
    + """
# Full batches keep the GPU busy; waiting up to 1 ms to fill one costs little against
# a 25 ms p99 budget.
dynamic_batching {{
  preferred_batch_size: [ 32, 64, 128 ]
  max_queue_delay_microseconds: 1000
}}

# Two instances: one batch's host-to-device copy overlaps another's compute.
instance_group [
  {{
    count: 2
    kind: KIND_GPU
  }}
]

# TensorRT runs the graph in FP16 (onnxruntime's CUDA provider takes any node it
# cannot). Engines are cached on the trt-cache volume, so only the first start builds.
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
        parameters {{ key: "precision_mode" value: "FP16" }}
        parameters {{ key: "max_workspace_size_bytes" value: "1073741824" }}
        parameters {{ key: "trt_engine_cache_enable" value: "1" }}
        parameters {{ key: "trt_engine_cache_path" value: "{trt_cache}" }}
      }}
    ]
  }}
}}

# Batch 1 then the largest batch at load: TensorRT builds its engine for the whole
# range of batch sizes before the first frame, not while a backlog waits.
"""
    + _warmup(1, 128)
)


def triton_config(model: str, target: Target, classes: int | None = None) -> str:
    """The Triton config.pbtxt text that serves ``model``'s model.onnx on ``target``.

    ``classes``: the width of PROBS (the number of labels); None writes ``-1``, which
    only the CPU target accepts (its python backend takes whatever onnxruntime returns;
    Triton's onnxruntime backend checks the dims against the graph)."""
    if classes is None and target is Target.GPU:
        raise ConfigError(
            f"the GPU config of model {model} needs its number of classes: Triton's "
            "onnxruntime backend checks PROBS' dims against the ONNX graph"
        )
    if classes is not None and classes < 1:
        raise ConfigError(f"model {model} has {classes} classes; it needs at least one")
    template = CONFIG_TEMPLATE if target is Target.CPU else GPU_CONFIG_TEMPLATE
    return template.format(
        name=model,
        image=IMAGE,
        probs=PROBS,
        labels=LABELS_FILE,
        classes=-1 if classes is None else classes,
        trt_cache=TRT_CACHE_DIR,
    )


def model_config(model: str) -> str:
    """The config.pbtxt ``install_version`` writes for a model that has none."""
    return triton_config(model, Target.CPU)


def install_version(
    repo: Path,
    model: str,
    number: int,
    onnx: Path,
    labels: Path,
    profile: Path,
    model_py: Path,
) -> Path:
    """Install one version into the repository as ``<repo>/<model>/<number>/`` (model.onnx,
    model.py, labels.txt, reference_profile.json) and make its labels and profile the
    model's; write the model's CPU config.pbtxt and GPU configs/gpu.pbtxt (Target) when
    it has none (the GPU one with the CPU one's version_policy).

    The version folder is written beside its place and renamed into it, so Triton never
    sees a half-written version. Installing the same files again changes nothing in the
    folder; a folder of that number holding a different model raises ConfigError.
    """
    if number < 1:
        raise ConfigError(f"version {number} of model {model}: Triton versions start at 1")
    sources = {
        ONNX_FILE: onnx,
        MODEL_PY_FILE: model_py,
        LABELS_FILE: labels,
        REFERENCE_PROFILE_FILE: profile,
    }
    for source in sources.values():
        if not source.is_file():
            raise ConfigError(f"cannot install {model} version {number}: {source} is missing")
    folder = repo / model
    target = folder / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    if target.exists():
        installed = target / ONNX_FILE
        if not installed.is_file() or _sha256(installed) != _sha256(onnx):
            raise ConfigError(
                f"{target} already holds a different model: Triton version {number} of "
                f"{model} is taken; remove that folder or register under another model name"
            )
    else:
        staging = folder / f".installing-{number}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name, source in sources.items():
                _copy_synced(source, staging / name)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    _copy_synced(labels, folder / LABELS_FILE)
    _copy_synced(profile, folder / REFERENCE_PROFILE_FILE)
    if not (folder / CONFIG_FILE).is_file():
        _write_synced(folder / CONFIG_FILE, model_config(model).encode())
    gpu = folder / GPU_CONFIG_FILE
    if not gpu.is_file():
        gpu.parent.mkdir(exist_ok=True)
        classes = len(read_labels(labels))
        gpu_config = triton_config(model, Target.GPU, classes)
        policy = _policy_text(folder / CONFIG_FILE)
        _write_synced(gpu, (_with_policy(gpu_config, policy) if policy else gpu_config).encode())
    return target


def _copy_synced(source: Path, target: Path) -> None:
    _write_synced(target, source.read_bytes())


def _write_synced(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all (a temp file renamed over it), mode 0644."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, target)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Serving: a model's default version and the versions Triton loads ----------------

SERVING_FILE = "serving.json"


def default_version(repo: Path, model: str) -> int | None:
    """The version that answers for cameras naming ``model`` but no version:
    ``<model>/serving.json``'s when present and its folder exists, else the latest
    version folder, else None (the model has no version).

    Cheap enough to call per batch; callers that poll it may compare
    ``serving_path(...).stat().st_mtime_ns`` first."""
    versions = model_versions(repo / model)
    pinned = _serving_version(repo / model / SERVING_FILE)
    if pinned is not None and pinned in versions:
        return pinned
    return versions[-1] if versions else None


def serving_path(repo: Path, model: str) -> Path:
    return repo / model / SERVING_FILE


def write_default_version(repo: Path, model: str, version: int) -> None:
    """Make ``version`` the default of ``model`` (serving.json, written atomically).

    Raises ConfigError when the repository has no such version: a default naming a
    missing folder would be ignored, which is never what the caller meant."""
    versions = model_versions(repo / model)
    if version not in versions:
        raise ConfigError(
            f"cannot make version {version} the default of model {model}: {repo / model} "
            f"has versions {list(versions)}; install it first (`camstream promote`)"
        )
    _write_synced(serving_path(repo, model), (json.dumps({"version": version}) + "\n").encode())


def _serving_version(path: Path) -> int | None:
    try:
        value = json.loads(path.read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def version_policy(repo: Path, model: str) -> list[int] | None:
    """The versions ``<model>/config.pbtxt``'s ``version_policy`` names: the listed
    ones for ``specific``, the version folders it selects for ``latest``/``all``; None
    when the config has no policy (Triton's default: the latest one version).

    Raises ConfigError when the config is missing or its policy cannot be read."""
    text = _read_config(repo, model)
    span = _top_level_field(text, "version_policy")
    if span is None:
        return None
    body = text[span[0] : span[1]]
    versions = model_versions(repo / model)
    if re.search(r"\bspecific\b", body):
        numbers = re.search(r"\bversions\s*:\s*\[([^\]]*)\]", body)
        listed = numbers.group(1) if numbers else ""
        single = re.findall(r"\bversions\s*:\s*(\d+)", body)  # proto's repeated form
        found = [int(n) for n in re.findall(r"\d+", listed)] + [int(n) for n in single]
        return sorted(set(found))
    if re.search(r"\ball\b", body):
        return list(versions)
    latest = re.search(r"\blatest\b[^}]*?\bnum_versions\s*:\s*(\d+)", body)
    if latest:
        return list(versions[-int(latest.group(1)) :]) if int(latest.group(1)) else []
    raise ConfigError(
        f"cannot read the version_policy of {repo / model / CONFIG_FILE}: "
        f"{body.strip()!r}; write it as version_policy: {{ specific: {{ versions: [N] }} }}"
    )


def loaded_versions(repo: Path, model: str) -> list[int]:
    """The versions Triton loads for ``model`` from this repository: its policy's, else
    the latest one (Triton's default), limited to the folders that exist."""
    versions = model_versions(repo / model)
    policy = version_policy(repo, model)
    if policy is None:
        return list(versions[-1:])
    return [v for v in policy if v in versions]


def set_version_policy(repo: Path, model: str, versions: Sequence[int]) -> None:
    """Rewrite (or add) the ``version_policy`` of ``<model>/config.pbtxt`` as
    ``{ specific { versions: [...] } }``, atomically; the rest of the file, comments
    included, stays as it was. Triton applies it at the next ``load_model(model)``
    and at every start, so a restarted server loads exactly these versions. The GPU
    config (configs/gpu.pbtxt), when the model has one, gets the same policy: a GPU
    server loads the versions a CPU one does."""
    wanted = sorted(set(versions))
    if not wanted or any(v < 1 for v in wanted):
        raise ConfigError(
            f"version_policy of model {model} needs at least one version >= 1, got {wanted}"
        )
    text = _read_config(repo, model)
    listed = ", ".join(str(v) for v in wanted)
    policy = f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"
    gpu = repo / model / GPU_CONFIG_FILE
    if gpu.is_file():
        _write_synced(gpu, _with_policy(gpu.read_text(), policy).encode())
    _write_synced(repo / model / CONFIG_FILE, _with_policy(text, policy).encode())


def _with_policy(text: str, policy: str) -> str:
    """``text`` (a config) with ``policy`` in place of its version_policy, or added."""
    span = _top_level_field(text, "version_policy")
    if span is None:
        note = "# Versions loaded, kept by `camstream promote` / `rollback` (camstream.rollout).\n"
        return text.rstrip("\n") + "\n\n" + note + policy + "\n"
    return text[: span[0]] + policy + text[span[1] :]


def _policy_text(config: Path) -> str | None:
    """The ``version_policy { ... }`` field of a config file as written; None if none."""
    try:
        text = config.read_text()
    except OSError:
        return None
    span = _top_level_field(text, "version_policy")
    return None if span is None else text[span[0] : span[1]]


def _read_config(repo: Path, model: str) -> str:
    path = repo / model / CONFIG_FILE
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{path} is missing: model {model} is not in the Triton repository {repo}"
        ) from exc


def _top_level_field(text: str, name: str) -> tuple[int, int] | None:
    """The span of ``name { ... }`` / ``name: { ... }`` at nesting depth 0 of a protobuf
    text file (comments and strings skipped), from the name to its closing brace."""
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if char in "\"'":
            i = _string_end(text, i)
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif depth == 0 and text.startswith(name, i) and _word_bounds(text, i, len(name)):
            brace = re.compile(r"\s*:?\s*\{").match(text, i + len(name))
            if brace:
                close = _matching_brace(text, brace.end() - 1)
                return i, close + 1
        i += 1
    return None


def _word_bounds(text: str, start: int, length: int) -> bool:
    before = text[start - 1] if start else " "
    after = text[start + length] if start + length < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")


def _string_end(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if char in "\"'":
            i = _string_end(text, i)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ConfigError(f"unbalanced braces in a config.pbtxt from offset {open_at}")
