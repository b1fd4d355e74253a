"""camstream.registry: immutable content-addressed versions, aliases and their history,
and the refusal of corrupted, truncated or half-written versions, on a real folder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from camstream.registry import (
    MANIFEST_FILE,
    REQUIRED_FILES,
    Registry,
    RegistryError,
    Version,
    code_version,
)
from camstream.settings import REPO_ROOT
from camstream.stack.triton import locate_model_env

MODEL = "fashion"
DATASET = "fashion-mnist"
MANIFEST_SHA = "ab" * 32
LABELS = ("shirt", "shoe", "bag", "coat")


def predictions(right: int, n: int = 300) -> list[dict[str, Any]]:
    """Rows for ``n`` test images, the first ``right`` of them predicted correctly (so a
    model with more right is right on a superset: a clear McNemar difference)."""
    rows = []
    for i in range(n):
        truth = LABELS[i % len(LABELS)]
        pred = truth if i < right else LABELS[(i + 1) % len(LABELS)]
        path = f"images/test/{i:05d}.png"
        rows.append({"sha256": f"{i:064x}", "path": path, "truth": truth, "pred": pred})
    return rows


def report(
    macro_f1: float, n: int = 300, baselines: Sequence[float] = (0.1, 0.4), ref: str = ""
) -> dict[str, Any]:
    """An evaluation report.json as training.evaluate writes it (the fields the gate reads)."""
    majority, logreg = baselines
    return {
        "model": ref,
        "dataset": DATASET,
        "dataset_manifest_sha256": MANIFEST_SHA,
        "split": "test",
        "n": n,
        "labels": list(LABELS),
        "macro_f1": macro_f1,
        "accuracy": macro_f1,
        "baselines": {
            "majority": {"macro_f1": majority, "accuracy": majority},
            "logreg_pixels": {"macro_f1": logreg, "accuracy": logreg},
            "champion": None,
        },
    }


def write_version(
    registry: Registry,
    model: str = MODEL,
    onnx: bytes = b"onnx-a",
    right: int = 240,
    skip: Sequence[str] = (),
) -> Path:
    """A staging folder holding a version's files (any bytes for the model), its
    evaluation right on ``right`` of 300 test images."""
    staging = registry.staging(model)
    rows = predictions(right)
    contents: dict[str, bytes] = {
        "model.onnx": onnx,
        "weights.pt": b"weights-" + onnx,
        "labels.txt": "\n".join(LABELS).encode() + b"\n",
        "reference_profile.json": json.dumps({"labels": list(LABELS)}).encode(),
        "card.json": json.dumps({"model": model, "summary": "test card"}).encode(),
        "card.md": b"# card\n",
        "training_config.json": b"{}",
        "evaluation/report.json": json.dumps(report(right / 300)).encode(),
        "evaluation/predictions.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
        "evaluation/explain/shirt.png": b"png",
    }
    for rel, data in contents.items():
        if rel in skip:
            continue
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    return staging


def register(registry: Registry, **kwargs: Any) -> Version:
    staging = write_version(registry, **kwargs)
    return registry.register(MODEL, staging, DATASET, MANIFEST_SHA, "test-code")


def _writable(path: Path) -> None:
    path.chmod(0o644)


def test_register_moves_the_staging_folder_into_an_immutable_content_addressed_version(
    tmp_path: Path,
) -> None:
    # Given a staging folder with every required file
    registry = Registry(tmp_path / "registry")
    staging = write_version(registry)
    # When it is registered
    version = registry.register(MODEL, staging, DATASET, MANIFEST_SHA, "test-code")
    # Then it is version 1, at versions/<digest>, its files read-only, nothing left behind
    assert (version.number, version.ref, len(version.digest)) == (1, f"{MODEL}:1", 16)
    assert version.path == tmp_path / "registry" / MODEL / "versions" / version.digest
    assert not staging.exists()
    for path in version.path.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
    manifest = version.manifest()
    assert set(manifest["files"]) >= set(REQUIRED_FILES) | {"weights.pt"}
    assert MANIFEST_FILE not in manifest["files"]
    assert (manifest["dataset"], manifest["dataset_manifest_sha256"]) == (DATASET, MANIFEST_SHA)
    assert manifest["code_version"] == "test-code" and manifest["model"] == MODEL
    assert version.labels() == list(LABELS)
    assert version.card()["summary"] == "test card" and version.report()["n"] == 300
    # And every way of naming it resolves to it
    for ref in (MODEL, f"{MODEL}:1", f"{MODEL}:{version.digest[:6]}", f"{MODEL}:{version.digest}"):
        assert registry.resolve(ref) == version, ref


def test_the_same_content_registered_twice_is_the_same_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    first = register(registry)
    again_staging = write_version(registry)
    again = registry.register(MODEL, again_staging, DATASET, MANIFEST_SHA, "other-code")
    assert again == first
    assert not again_staging.exists()
    assert [v.number for v in registry.versions(MODEL)] == [1]
    # a different dataset manifest is different content
    other = registry.register(MODEL, write_version(registry), DATASET, "cd" * 32, "test-code")
    assert other.number == 2 and other.digest != first.digest


def _register_in_child(args: tuple[str, int]) -> int:
    root, seed = args
    registry = Registry(Path(root))
    return register(registry, onnx=f"onnx-{seed}".encode()).number


def test_numbers_are_assigned_once_each_under_concurrent_registration(tmp_path: Path) -> None:
    # Given eight processes registering different versions at once
    root = str(tmp_path / "registry")
    with ProcessPoolExecutor(max_workers=8) as pool:
        numbers = list(pool.map(_register_in_child, [(root, i) for i in range(8)]))
    # Then each got its own number, 1..8, and the index holds each once
    assert sorted(numbers) == list(range(1, 9))
    assert [v.number for v in Registry(Path(root)).versions(MODEL)] == list(range(1, 9))


def test_aliases_move_and_every_change_is_in_the_history(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    one = register(registry, onnx=b"one")
    two = register(registry, onnx=b"two")
    # When champion goes to 1, then (forced) to 2, and candidate to 2
    registry.set_alias(MODEL, "champion", 1, "first", {"macro_f1": 0.8})
    registry.set_alias(MODEL, "champion", 2, "hotfix", {"macro_f1": 0.7}, forced=True)
    registry.set_alias(MODEL, "candidate", 2, "trained", {})
    # Then the aliases point there and a bare name means the champion
    assert registry.aliases(MODEL) == {"champion": 2, "candidate": 2}
    assert registry.resolve(MODEL) == two == registry.resolve(f"{MODEL}:champion")
    assert registry.resolve(f"{MODEL}:1") == one
    # And the history holds each change in order, with from, to, reason, forced and metrics
    history = registry.history(MODEL)
    assert [(h["alias"], h["from"], h["to"], h["reason"], h["forced"]) for h in history] == [
        ("champion", None, 1, "first", False),
        ("champion", 1, 2, "hotfix", True),
        ("candidate", None, 2, "trained", False),
    ]
    assert history[1]["metrics"] == {"macro_f1": 0.7}
    assert all(isinstance(h["time_ms"], int) for h in history)


def test_an_alias_to_a_missing_version_changes_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry)
    with pytest.raises(RegistryError, match=r"no version 7 \(it has \[1\]\)"):
        registry.set_alias(MODEL, "champion", 7, "typo", {})
    with pytest.raises(RegistryError, match="alias"):
        registry.set_alias(MODEL, "3", 1, "a number is not an alias", {})
    assert registry.aliases(MODEL) == {} and registry.history(MODEL) == []


def test_an_unknown_version_names_what_exists(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry)
    registry.set_alias(MODEL, "champion", 1, "first", {})
    with pytest.raises(RegistryError, match=r"no version '9'.*\[1\].*champion"):
        registry.resolve(f"{MODEL}:9")
    with pytest.raises(RegistryError, match=r"model other has no registered version.*fashion"):
        registry.resolve("other:1")


def test_a_truncated_model_file_is_refused_with_its_name(tmp_path: Path) -> None:
    # Given a registered version whose model.onnx lost its tail
    registry = Registry(tmp_path / "registry")
    version = register(registry)
    onnx = version.path / "model.onnx"
    _writable(onnx)
    onnx.write_bytes(onnx.read_bytes()[:3])
    # Then resolving it is refused, naming the model, its number and digest and the file
    with pytest.raises(RegistryError) as refused:
        registry.resolve(f"{MODEL}:1")
    message = str(refused.value)
    assert f"model {MODEL} version 1 ({version.digest})" in message
    assert "model.onnx is corrupted or truncated (3 bytes" in message


def test_a_corrupted_file_of_equal_size_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = register(registry)
    labels = version.path / "labels.txt"
    _writable(labels)
    labels.write_text(labels.read_text().replace("shirt", "shirr"))
    with pytest.raises(RegistryError, match=r"version 1 .*labels.txt is corrupted"):
        registry.resolve(MODEL)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (MANIFEST_FILE, r"half-written: .*MANIFEST.json is missing"),
        (
            "evaluation/predictions.jsonl",
            r"half-written: .*evaluation/predictions.jsonl is missing",
        ),
        ("weights.pt", r"file .*weights.pt is missing"),
    ],
)
def test_a_half_written_version_is_refused_with_its_name(
    tmp_path: Path, remove: str, message: str
) -> None:
    registry = Registry(tmp_path / "registry")
    version = register(registry)
    (version.path / remove).unlink()
    with pytest.raises(RegistryError, match=rf"model {MODEL} version 1 .*{message}"):
        registry.resolve(f"{MODEL}:1")


def test_a_file_added_to_a_version_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = register(registry)
    (version.path / "model.onnx.bak").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"model.onnx.bak is not in its manifest"):
        registry.verify(version)


def test_registering_without_a_required_file_changes_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    first = register(registry)
    staging = write_version(registry, onnx=b"other", skip=("card.md", "model.onnx"))
    with pytest.raises(RegistryError, match=r"missing model.onnx, card.md; nothing"):
        registry.register(MODEL, staging, DATASET, MANIFEST_SHA, "test-code")
    assert registry.versions(MODEL) == [first]


def test_leftover_staging_folders_are_not_versions_or_models(tmp_path: Path) -> None:
    # Given a training run that died after writing its staging folder, for two models
    registry = Registry(tmp_path / "registry")
    register(registry)
    write_version(registry)
    write_version(registry, model="crashed")
    # Then listing sees only registered versions and models
    assert registry.models() == [MODEL]
    assert [v.number for v in registry.versions(MODEL)] == [1]
    assert registry.versions("crashed") == []
    with pytest.raises(RegistryError, match="has no registered version"):
        registry.resolve("crashed")


def test_a_staging_folder_of_another_model_is_not_registered(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    staging = write_version(registry, model="other")
    with pytest.raises(RegistryError, match="not a staging folder of model fashion"):
        registry.register(MODEL, staging, DATASET, MANIFEST_SHA, "x")


def test_report_dir_is_per_version_dataset_and_split(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = register(registry)
    assert registry.report_dir(version, DATASET, "test") == (
        tmp_path / "registry" / MODEL / "reports" / "1" / f"{DATASET}-test"
    )


def test_a_torn_last_index_line_is_skipped(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry)
    with (tmp_path / "registry" / MODEL / "index.jsonl").open("a") as index:
        index.write('{"number": 2, "dig')
    assert [v.number for v in registry.versions(MODEL)] == [1]


def test_code_version_outside_git_hashes_the_package_files(tmp_path: Path) -> None:
    # Given a copy of the code without .git
    for package in ("camstream", "training"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    first = code_version(tmp_path)
    assert first.startswith("files-") and code_version(tmp_path) == first
    # When a file changes, so does the code version
    (tmp_path / "training" / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) != first


def test_registry_imports_in_the_model_environment_without_app_dependencies() -> None:
    python = locate_model_env().bin_dir / "python"  # part of every set-up: never skipped
    probe = (
        "import sys, camstream.registry; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "{'pydantic', 'pydantic_settings', 'numpy', 'structlog', 'yaml', 'scipy'}))"
    )
    result = subprocess.run(
        [str(python), "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
