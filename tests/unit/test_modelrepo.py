"""camstream.modelrepo: the model repository's layout, read from a real folder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from camstream import modelrepo
from camstream.errors import ConfigError
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.triton import locate_model_env


def _repo(tmp_path: Path) -> Path:
    """Two models: one with versions 1, 2 and 10 (and folders Triton ignores), one with
    a config only; plus a stray file and a hidden folder."""
    repo = tmp_path / "repo"
    classifier = repo / "classifier"
    for version in ("1", "2", "10", "010", "0", "latest"):
        (classifier / version).mkdir(parents=True)
        (classifier / version / modelrepo.ONNX_FILE).write_bytes(b"onnx")
    (classifier / modelrepo.CONFIG_FILE).write_text('name: "classifier"\n')
    (classifier / modelrepo.LABELS_FILE).write_text("tench, Tinca tinca\n\ngoldfish\n")
    (repo / "detector").mkdir()
    (repo / "detector" / modelrepo.CONFIG_FILE).write_text('name: "detector"\n')
    (repo / ".cache").mkdir()
    (repo / "README.txt").write_text("not a model\n")
    (repo / "notes").mkdir()
    return repo


def test_list_models_gives_each_model_with_its_numeric_versions(tmp_path: Path) -> None:
    # Given a repository with two models, a stray folder, a file and a hidden folder
    repo = _repo(tmp_path)
    # When its models are listed
    models = modelrepo.list_models(repo)
    # Then each model comes with its versions in numeric order, and nothing else
    assert [(m.name, m.versions) for m in models] == [
        ("classifier", (1, 2, 10)),
        ("detector", ()),
    ]
    assert models[0].latest == 10 and models[1].latest is None
    assert modelrepo.list_models(tmp_path / "missing") == []


def test_an_empty_version_means_the_latest_numeric_version(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert modelrepo.resolve_version(repo, "classifier") == 10  # not "2" > "10"
    assert modelrepo.version_dir(repo, "classifier", "2") == repo / "classifier" / "2"
    assert modelrepo.onnx_path(repo, "classifier", 1) == repo / "classifier/1/model.onnx"


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("classifier", "3", r"no version 3 .*\[1, 2, 10\]"),
        ("classifier", "010", "not a positive integer"),
        ("classifier", "latest", "not a positive integer"),
        ("detector", "", "has no version"),
        ("absent", "", "has no version"),
    ],
)
def test_a_missing_version_names_the_model_and_the_fix(
    tmp_path: Path, model: str, version: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        modelrepo.resolve_version(_repo(tmp_path), model, version)


def test_labels_keep_the_first_synonym_and_skip_blank_lines(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert modelrepo.read_labels(modelrepo.labels_path(repo, "classifier")) == [
        "tench",
        "goldfish",
    ]
    with pytest.raises(ConfigError, match="camstream setup"):
        modelrepo.read_labels(modelrepo.labels_path(repo, "detector"))


def test_settings_resolve_the_served_version_from_the_repository(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    latest = Settings(model_repo=repo, model_name="classifier")
    pinned = Settings(model_repo=repo, model_name="classifier", model_version="2")
    assert latest.model_version_dir() == repo / "classifier" / "10"
    assert pinned.model_version_dir() == repo / "classifier" / "2"
    assert latest.labels_path == repo / "classifier" / "labels.txt"


def test_the_served_models_config_names_the_tensors_camstream_sends() -> None:
    # Given every model config in the source tree's Triton repository
    for model in modelrepo.list_models(REPO_ROOT / "triton_repo"):
        config = (model.path / modelrepo.CONFIG_FILE).read_text()
        # Then its one input is IMAGE and its one output PROBS
        inputs = re.findall(r'input\s*\[\s*\{\s*name:\s*"(\w+)"', config)
        outputs = re.findall(r'output\s*\[\s*\{\s*name:\s*"(\w+)"', config)
        assert (inputs, outputs) == ([modelrepo.IMAGE], [modelrepo.PROBS]), model.name


def test_modelrepo_imports_in_the_model_environment_without_app_dependencies() -> None:
    # Given the model environment's interpreter (numpy < 2, no pydantic)
    python = locate_model_env().bin_dir / "python"  # part of every set-up: never skipped
    # When it imports camstream.modelrepo
    probe = (
        "import sys, camstream.modelrepo; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "{'pydantic', 'pydantic_settings', 'numpy', 'structlog', 'yaml'}))"
    )
    result = subprocess.run(
        [str(python), "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # Then it works and pulls in none of the application's dependencies
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
