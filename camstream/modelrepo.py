"""The Triton model repository as camstream reads and writes it: one layout, one place.

    <repo>/<model>/config.pbtxt            Triton's configuration (names, batching) and
                                           its version_policy: the versions in use
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

# The config of a model that promote installs: the shape of efficientnet_lite0's
# config.pbtxt (its comments hold the measurements behind each setting), with PROBS
# sized by the model's labels. model.py reads every name and number from here.
CONFIG_TEMPLATE = """\
# Written by `camstream promote` (camstream.modelrepo.install_version): the python
# backend running onnxruntime on each version's model.onnx, like efficientnet_lite0
# (whose config.pbtxt gives the measured reasons for batching, instances and threads).
name: "{name}"
backend: "python"
max_batch_size: 32

input [
  {{
    name: "{image}"
    data_type: TYPE_UINT8
    dims: [ 224, 224, 3 ]
  }}
]

# Softmax probabilities over the classes of labels.txt (the champion's), in its order.
output [
  {{
    name: "{probs}"
    data_type: TYPE_FP32
    dims: [ -1 ]
    label_filename: "{labels}"
  }}
]

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

model_warmup [
  {{
    name: "zeros_batch_4"
    batch_size: 4
    inputs {{
      key: "{image}"
      value: {{
        data_type: TYPE_UINT8
        dims: [ 224, 224, 3 ]
        zero_data: true
      }}
    }}
  }}
]
"""


def model_config(model: str) -> str:
    """The config.pbtxt ``install_version`` writes for a model that has none."""
    return CONFIG_TEMPLATE.format(name=model, image=IMAGE, probs=PROBS, labels=LABELS_FILE)


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
    model's; write the model's config.pbtxt when it has none.

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
    and at every start, so a restarted server loads exactly these versions."""
    wanted = sorted(set(versions))
    if not wanted or any(v < 1 for v in wanted):
        raise ConfigError(
            f"version_policy of model {model} needs at least one version >= 1, got {wanted}"
        )
    text = _read_config(repo, model)
    listed = ", ".join(str(v) for v in wanted)
    policy = f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"
    span = _top_level_field(text, "version_policy")
    if span is None:
        note = "# Versions loaded, kept by `camstream promote` / `rollback` (rollout.py).\n"
        updated = text.rstrip("\n") + "\n\n" + note + policy + "\n"
    else:
        updated = text[: span[0]] + policy + text[span[1] :]
    _write_synced(repo / model / CONFIG_FILE, updated.encode())


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
