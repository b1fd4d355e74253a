"""Training on a CI-sized Fashion-MNIST subset, through the real training command.

Each run is ``python -m training.train`` in the model environment (as `camstream train`
runs it), into a temporary registry; embeddings go to the real cache, so the datasets'
shared images are embedded once per machine. The datasets and the runs are module
fixtures: every test reads the runs it needs, and no run happens twice.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from camstream.datasets import Dataset
from camstream.fashion_mnist import fetch
from camstream.imaging import encode_jpeg, jpeg_to_model_input
from camstream.registry import Registry
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.setup import run_in_model_env
from camstream.stack.triton import locate_model_env

# Measured on 2 shared cores: ~3 min for the file with a warm embedding cache (4 runs of
# ~40 s each), ~4 min on a cold one. A smaller subset narrows test (a)'s margin (+0.068).
TRAIN_PER_CLASS = 100  # 90 train + 10 val per class
TEST_PER_CLASS = 50
RARE = "shirt"
MODEL = "fashion-ci"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp("datasets")
    cache = Settings().cache_dir
    sizes: dict[str, Any] = {"train_per_class": TRAIN_PER_CLASS, "test_per_class": TEST_PER_CLASS}
    balanced = fetch(root, cache, "fm-balanced", **sizes)
    # The same images but one class's: its shared images are embedded once.
    imbalanced = fetch(root, cache, "fm-rare", rare={RARE: 0.1}, **sizes)
    return {"balanced": balanced, "imbalanced": imbalanced}


class Runner:
    """Trains in the model env and hands back (summary, version folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0

    def train(
        self, dataset: Dataset, registry: Path, **options: Any
    ) -> tuple[dict[str, Any], Path]:
        self.runs += 1
        config = {
            "dataset_dir": str(dataset.root),
            "model": MODEL,
            "registry_dir": str(registry),
            "cache_dir": str(Settings().cache_dir),
            "explain_per_class": 0,  # the explanation page is evaluate's to test
            "profile_frames": 50,
            **options,
        }
        config_path = self.root / f"config-{self.runs}.json"
        summary_path = self.root / f"summary-{self.runs}.json"
        config_path.write_text(json.dumps(config))
        run_in_model_env(
            locate_model_env(),
            ["training.train", "--config", str(config_path), "--summary", str(summary_path)],
            f"train run {self.runs}",
        )
        summary = json.loads(summary_path.read_text())
        return summary, Registry(registry).resolve(summary["ref"]).path


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def balanced_runs(
    runner: Runner, datasets: dict[str, Dataset], tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[dict[str, Any], Path]]:
    """The default config twice, same seed, into one registry."""
    registry = tmp_path_factory.mktemp("registry-balanced")
    return [runner.train(datasets["balanced"], registry, seed=7) for _ in range(2)]


@pytest.fixture(scope="module")
def imbalanced_runs(
    runner: Runner, datasets: dict[str, Dataset], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Class weights and no weighting on the set with one rare class, same seed."""
    registry = tmp_path_factory.mktemp("registry-imbalanced")
    reports = {}
    for imbalance in ("class_weights", "none"):
        _, version = runner.train(datasets["imbalanced"], registry, seed=3, imbalance=imbalance)
        reports[imbalance] = json.loads((version / "evaluation" / "report.json").read_text())
    return reports


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trained_version_beats_logistic_regression_on_pixels(
    balanced_runs: list[tuple[dict[str, Any], Path]],
) -> None:
    # Given a version trained on the balanced subset
    summary, version = balanced_runs[0]
    report = json.loads((version / "evaluation" / "report.json").read_text())
    # Then its test macro-F1 beats logistic regression on the same run's pixels by 0.05
    logreg = report["baselines"]["logreg_pixels"]["macro_f1"]
    assert report["macro_f1"] >= logreg + 0.05, (report["macro_f1"], logreg)
    assert report["macro_f1"] > report["baselines"]["majority"]["macro_f1"] + 0.5
    # and the version holds everything a version must, and is the candidate
    for name in ("model.onnx", "labels.txt", "weights.pt", "learning_curves.png"):
        assert (version / name).is_file(), name
    assert (version / "labels.txt").read_text().split() == sorted(summary["classes"])
    # and each run's version became the candidate in turn (the last one is now)
    last, _ = balanced_runs[-1]
    registry = Registry(version.parents[2])
    assert registry.aliases(MODEL)["candidate"] == registry.resolve(last["ref"]).number
    assert [h["reason"] for h in registry.history(MODEL)] == ["trained"] * len(balanced_runs)


def test_same_seed_trains_identical_weights_and_onnx(
    balanced_runs: list[tuple[dict[str, Any], Path]],
) -> None:
    # Given the same config and seed trained twice
    (first, one), (second, two) = balanced_runs
    # Then the weights and the exported model are byte for byte the same
    assert _sha(one / "weights.pt") == _sha(two / "weights.pt")
    assert _sha(one / "model.onnx") == _sha(two / "model.onnx")
    assert first["head"]["curve"]["val_macro_f1"] == second["head"]["curve"]["val_macro_f1"]
    # and the second run computed no embeddings: every one came from the cache
    assert second["embedding"]["computed"] == 0


def test_class_weights_raise_rare_class_recall_and_macro_f1(
    imbalanced_runs: dict[str, dict[str, Any]],
) -> None:
    # Given one class ten times rarer, trained with and without class weights, same seed
    weighted, plain = imbalanced_runs["class_weights"], imbalanced_runs["none"]
    # Then weighting raises that class's recall and the macro-F1
    assert weighted["per_class"][RARE]["recall"] > plain["per_class"][RARE]["recall"]
    assert weighted["macro_f1"] > plain["macro_f1"]


# What a conveyor camera sends (an upscaled product photo) and a 720p camera frame: the
# worker decodes the latter at half size, so the training path must do the same.
@pytest.mark.parametrize(("width", "height"), [(224, 224), (1280, 720)])
def test_training_input_equals_serving_input_for_the_same_jpeg(
    tmp_path: Path, datasets: dict[str, Dataset], width: int, height: int
) -> None:
    # Given a JPEG made from a dataset image, as a camera would publish it
    dataset = datasets["balanced"]
    record = dataset.records[0]
    grey = np.asarray(cv2.imread(str(dataset.image_path(record)), cv2.IMREAD_COLOR))
    frame = cv2.resize(grey, (width, height), interpolation=cv2.INTER_LINEAR)
    data = encode_jpeg(np.asarray(frame, dtype=np.uint8), 85)
    jpeg = tmp_path / "frame.jpg"
    jpeg.write_bytes(data)
    # When training reads the file (model env: its own OpenCV)
    out = tmp_path / "training_input.npy"
    code = (
        "import sys, numpy as np; from pathlib import Path; "
        "from training.predict import load_model_input; "
        "np.save(sys.argv[2], load_model_input(Path(sys.argv[1])))"
    )
    python = locate_model_env().bin_dir / "python"
    subprocess.run(
        [str(python), "-c", code, str(jpeg), str(out)],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    # Then its input tensor is the worker's for the same bytes, exactly
    served = jpeg_to_model_input(data, width, height)
    trained = np.load(out)
    assert trained.dtype == served.dtype and trained.shape == served.shape
    assert np.array_equal(trained, served), int(np.abs(trained.astype(int) - served).max())
