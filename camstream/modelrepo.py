"""The Triton model repository as camstream reads and writes it: one layout, one place.

    <repo>/<model>/config.pbtxt            Triton's configuration (names, batching)
    <repo>/<model>/labels.txt              class names, one a line; the first synonym
                                           before a comma is the label
    <repo>/<model>/reference_profile.json  the drift reference profile
    <repo>/<model>/<version>/model.onnx    one version: a positive integer folder name
    <repo>/<model>/<version>/model.py      the python-backend model that serves it

Every exported model takes ``IMAGE`` (RGB uint8 [N, 224, 224, 3]) and returns ``PROBS``
(float32 softmax over its labels), so any model can serve any camera.

Standard library only: the model environment (training.export, training.baseline)
imports it as well as the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from camstream.errors import ConfigError

IMAGE = "IMAGE"
PROBS = "PROBS"

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
REFERENCE_PROFILE_FILE = "reference_profile.json"
ONNX_FILE = "model.onnx"


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


def labels_path(repo: Path, model: str) -> Path:
    return repo / model / LABELS_FILE


def reference_profile_path(repo: Path, model: str) -> Path:
    return repo / model / REFERENCE_PROFILE_FILE


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
