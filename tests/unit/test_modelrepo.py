"""camstream.modelrepo: the model repository's layout, read from a real folder."""

from __future__ import annotations

import json
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


def _sources(tmp_path: Path, tag: str) -> dict[str, Path]:
    """A version's files as promote passes them (any bytes for the model)."""
    folder = tmp_path / f"src-{tag}"
    folder.mkdir()
    files = {
        "onnx": (folder / "model.onnx", f"onnx-{tag}"),
        "labels": (folder / "labels.txt", f"shirt-{tag}\nshoe\n"),
        "profile": (folder / "reference_profile.json", f'{{"tag": "{tag}"}}'),
        "model_py": (folder / "model.py", "# model\n"),
    }
    for path, text in files.values():
        path.write_text(text)
        path.chmod(0o444)  # registry files are read-only; installed copies must not be
    return {name: path for name, (path, _) in files.items()}


def test_install_version_writes_a_whole_version_and_makes_its_labels_the_models(
    tmp_path: Path,
) -> None:
    # Given an empty repository and a version's files
    repo = tmp_path / "repo"
    # When version 3 of a new model is installed
    target = modelrepo.install_version(repo, "fashion", 3, **_sources(tmp_path, "a"))
    # Then its folder holds the four files, and nothing half-written is left beside it
    assert target == repo / "fashion" / "3"
    assert sorted(p.name for p in target.iterdir()) == [
        "labels.txt",
        "model.onnx",
        "model.py",
        "reference_profile.json",
    ]
    assert sorted(p.name for p in (repo / "fashion").iterdir()) == [
        "3",
        "config.pbtxt",
        "configs",
        "labels.txt",
        "reference_profile.json",
    ]
    assert (target / "model.onnx").read_text() == "onnx-a"
    assert (target / "model.onnx").stat().st_mode & 0o200  # writable copy, not 0444
    assert modelrepo.model_versions(repo / "fashion") == (3,)
    # And the model-level labels and profile are this version's
    assert modelrepo.read_labels(modelrepo.labels_path(repo, "fashion")) == ["shirt-a", "shoe"]
    assert modelrepo.reference_profile_path(repo, "fashion").read_text() == '{"tag": "a"}'


def test_install_version_writes_a_config_triton_serves_with_camstreams_tensors(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "a"))
    config = (repo / "fashion" / modelrepo.CONFIG_FILE).read_text()
    inputs = re.findall(r'input\s*\[\s*\{\s*name:\s*"(\w+)"', config)
    outputs = re.findall(r'output\s*\[\s*\{\s*name:\s*"(\w+)"', config)
    assert (inputs, outputs) == ([modelrepo.IMAGE], [modelrepo.PROBS])
    assert 'name: "fashion"' in config and 'backend: "python"' in config
    assert "max_batch_size: 32" in config and "TYPE_UINT8" in config
    assert "dims: [ -1 ]" in config and 'label_filename: "labels.txt"' in config
    assert 'key: "ORT_INTRA_OP_THREADS"' in config and "model_warmup" in config
    # the generic model.py reads these: same keys as the efficientnet_lite0 config
    served = (REPO_ROOT / "triton_repo" / "efficientnet_lite0" / "config.pbtxt").read_text()
    for key in ("dynamic_batching", "instance_group", "KIND_CPU", "zero_data: true"):
        assert key in config and key in served


def test_install_version_writes_the_gpu_config_sized_by_the_versions_labels(
    tmp_path: Path,
) -> None:
    # Given an empty repository
    repo = tmp_path / "repo"
    # When version 1 of a new model (two labels) is installed
    modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "a"))
    # Then its GPU config is the generator's, PROBS as wide as the labels
    gpu = modelrepo.config_path(repo, "fashion", modelrepo.Target.GPU)
    assert gpu == repo / "fashion" / "configs" / "gpu.pbtxt"
    assert gpu.read_text() == modelrepo.triton_config("fashion", modelrepo.Target.GPU, 2)
    # And a later version leaves a GPU config that exists as it is
    gpu.write_text(gpu.read_text() + "# tuned\n")
    modelrepo.install_version(repo, "fashion", 2, **_sources(tmp_path, "b"))
    assert gpu.read_text().endswith("# tuned\n")


def test_set_version_policy_gives_the_gpu_config_the_same_versions(tmp_path: Path) -> None:
    # Given a model with a CPU and a GPU config
    repo = tmp_path / "repo"
    modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "a"))
    modelrepo.install_version(repo, "fashion", 2, **_sources(tmp_path, "b"))
    # When a rollout sets the versions in use
    modelrepo.set_version_policy(repo, "fashion", [1, 2])
    # Then both configs name them, and the rest of the GPU config is as generated
    policy = "version_policy: { specific: { versions: [ 1, 2 ] } }"
    for target in modelrepo.Target:
        text = modelrepo.config_path(repo, "fashion", target).read_text()
        assert text.count(policy) == 1, target
    gpu = modelrepo.config_path(repo, "fashion", modelrepo.Target.GPU).read_text()
    assert gpu.startswith(modelrepo.triton_config("fashion", modelrepo.Target.GPU, 2))
    # And a GPU config written after a policy was set starts with that policy
    modelrepo.config_path(repo, "fashion", modelrepo.Target.GPU).unlink()
    modelrepo.install_version(repo, "fashion", 3, **_sources(tmp_path, "c"))
    assert policy in modelrepo.config_path(repo, "fashion", modelrepo.Target.GPU).read_text()


def test_a_second_version_keeps_the_config_and_takes_over_the_labels(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "a"))
    (repo / "fashion" / modelrepo.CONFIG_FILE).write_text('name: "fashion"\n# tuned\n')
    modelrepo.install_version(repo, "fashion", 2, **_sources(tmp_path, "b"))
    assert (repo / "fashion" / modelrepo.CONFIG_FILE).read_text().endswith("# tuned\n")
    assert modelrepo.model_versions(repo / "fashion") == (1, 2)
    assert modelrepo.read_labels(modelrepo.labels_path(repo, "fashion"))[0] == "shirt-b"
    # each version keeps its own labels and profile, which win when asked for by version
    assert modelrepo.labels_path(repo, "fashion", 1) == repo / "fashion" / "1" / "labels.txt"
    assert modelrepo.read_labels(modelrepo.labels_path(repo, "fashion", "1"))[0] == "shirt-a"
    assert modelrepo.reference_profile_path(repo, "fashion", 2) == (
        repo / "fashion" / "2" / "reference_profile.json"
    )


def test_installing_the_same_version_again_is_a_no_op_and_a_different_one_is_refused(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    sources = _sources(tmp_path, "a")
    first = modelrepo.install_version(repo, "fashion", 1, **sources)
    assert modelrepo.install_version(repo, "fashion", 1, **sources) == first
    with pytest.raises(ConfigError, match=r"fashion/1 already holds a different model"):
        modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "b"))
    assert (first / "model.onnx").read_text() == "onnx-a"
    assert [p.name for p in (repo / "fashion").iterdir() if p.name.startswith(".")] == []


def test_a_missing_source_file_installs_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sources = _sources(tmp_path, "a")
    sources["profile"] = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=r"absent.json is missing"):
        modelrepo.install_version(repo, "fashion", 1, **sources)
    assert modelrepo.model_versions(repo / "fashion") == ()


def test_labels_and_profile_fall_back_to_the_models_when_a_version_has_none(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path)
    assert modelrepo.labels_path(repo, "classifier", 2) == repo / "classifier" / "labels.txt"
    assert modelrepo.labels_path(repo, "classifier", "") == repo / "classifier" / "labels.txt"
    assert modelrepo.served_version(repo, "classifier") == 10
    assert modelrepo.served_version(repo, "detector") is None


def test_settings_use_the_served_versions_own_labels_and_profile(tmp_path: Path) -> None:
    # Given a model with versions 1 and 2, each installed with its own labels and profile
    repo = tmp_path / "repo"
    modelrepo.install_version(repo, "fashion", 1, **_sources(tmp_path, "a"))
    modelrepo.install_version(repo, "fashion", 2, **_sources(tmp_path, "b"))
    latest = Settings(model_repo=repo, model_name="fashion")
    pinned = Settings(model_repo=repo, model_name="fashion", model_version="1")
    # Then the served version's files are used: the latest, or the pinned one
    assert latest.labels_path == repo / "fashion" / "2" / "labels.txt"
    assert pinned.labels_path == repo / "fashion" / "1" / "labels.txt"
    assert pinned.reference_profile_path == repo / "fashion" / "1" / "reference_profile.json"
    # And an explicit drift reference still wins; a model with no version uses its own
    chosen = tmp_path / "profile.json"
    assert (
        Settings(
            model_repo=repo, model_name="fashion", drift_reference=chosen
        ).reference_profile_path
        == chosen
    )
    empty = Settings(model_repo=repo, model_name="absent")
    assert empty.labels_path == repo / "absent" / "labels.txt"


# Serving: default version and version policy ----------------------------------------


def _served_repo(tmp_path: Path, *versions: int) -> Path:
    """A repository with one model installed at ``versions`` (real install_version)."""
    repo = tmp_path / "repo"
    for number in versions:
        modelrepo.install_version(repo, "fashion", number, **_sources(tmp_path, f"v{number}"))
    return repo


def test_the_default_version_is_serving_json_else_the_latest_folder(tmp_path: Path) -> None:
    # Given a model with versions 1 and 3 and no serving.json
    repo = _served_repo(tmp_path, 1, 3)
    # Then the default is the latest folder; a model without versions has none
    assert modelrepo.default_version(repo, "fashion") == 3
    assert modelrepo.default_version(repo, "absent") is None
    # When version 1 is made the default
    modelrepo.write_default_version(repo, "fashion", 1)
    # Then serving.json says so, and the default is 1 although 3 is the latest
    assert json.loads(modelrepo.serving_path(repo, "fashion").read_text()) == {"version": 1}
    assert modelrepo.default_version(repo, "fashion") == 1
    assert [p.name for p in (repo / "fashion").iterdir() if p.name.startswith(".")] == []


def test_a_default_naming_a_missing_folder_falls_back_to_the_latest(tmp_path: Path) -> None:
    repo = _served_repo(tmp_path, 1, 2)
    modelrepo.serving_path(repo, "fashion").write_text('{"version": 7}')
    assert modelrepo.default_version(repo, "fashion") == 2
    modelrepo.serving_path(repo, "fashion").write_text("{not json")
    assert modelrepo.default_version(repo, "fashion") == 2


def test_writing_a_default_for_a_version_not_installed_is_refused(tmp_path: Path) -> None:
    repo = _served_repo(tmp_path, 1)
    with pytest.raises(ConfigError, match=r"version 4 .* has versions \[1\]; install it"):
        modelrepo.write_default_version(repo, "fashion", 4)
    assert not modelrepo.serving_path(repo, "fashion").exists()


def test_set_version_policy_adds_then_rewrites_the_policy_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    # Given the config install_version writes (no policy: Triton's latest 1)
    repo = _served_repo(tmp_path, 1, 2, 3)
    config = repo / "fashion" / modelrepo.CONFIG_FILE
    before = config.read_text()
    assert modelrepo.version_policy(repo, "fashion") is None
    assert modelrepo.loaded_versions(repo, "fashion") == [3]
    # When the policy is set to versions 2 and 1 (any order, duplicates)
    modelrepo.set_version_policy(repo, "fashion", [2, 1, 2])
    # Then it reads back sorted, and every line of the original config is still there
    assert modelrepo.version_policy(repo, "fashion") == [1, 2]
    assert modelrepo.loaded_versions(repo, "fashion") == [1, 2]
    after = config.read_text()
    assert after.startswith(before.rstrip("\n"))
    assert "version_policy: { specific: { versions: [ 1, 2 ] } }" in after
    # When it is set again, the one policy is replaced in place, not added twice
    modelrepo.set_version_policy(repo, "fashion", [3])
    text = config.read_text()
    assert text.count("version_policy") == 1
    assert modelrepo.version_policy(repo, "fashion") == [3]
    assert text.replace("[ 3 ]", "[ 1, 2 ]") == after


def test_version_policy_reads_triton_forms_and_ignores_comments_and_nested_fields(
    tmp_path: Path,
) -> None:
    repo = _served_repo(tmp_path, 1, 2, 3)
    config = repo / "fashion" / modelrepo.CONFIG_FILE
    base = config.read_text()
    forms = {
        "version_policy { all { } }": [1, 2, 3],
        "version_policy: { latest: { num_versions: 2 } }": [2, 3],
        "version_policy {\n  specific {\n    versions: 1\n    versions: 3\n  }\n}": [1, 3],
        '# version_policy { all { } }\nparameters { key: "version_policy { all {} }" }': None,
    }
    for form, expected in forms.items():
        config.write_text(base + "\n" + form + "\n")
        assert modelrepo.version_policy(repo, "fashion") == expected, form
    # a policy inside a nested message is not the model's
    config.write_text(base + "\nensemble_scheduling { version_policy { all { } } }\n")
    assert modelrepo.version_policy(repo, "fashion") is None
    # rewriting keeps the comment and the nested field untouched
    config.write_text(base + "\n# keep me\nversion_policy { all { } }\n# and me\n")
    modelrepo.set_version_policy(repo, "fashion", [2])
    text = config.read_text()
    assert "# keep me\nversion_policy: { specific: { versions: [ 2 ] } }\n# and me" in text


def test_set_version_policy_refuses_no_versions_and_a_missing_config(tmp_path: Path) -> None:
    repo = _served_repo(tmp_path, 1)
    with pytest.raises(ConfigError, match="at least one version"):
        modelrepo.set_version_policy(repo, "fashion", [])
    with pytest.raises(ConfigError, match=r"config\.pbtxt is missing"):
        modelrepo.set_version_policy(repo, "absent", [1])
