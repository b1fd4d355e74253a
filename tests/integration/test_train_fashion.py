"""Training on a CI-sized Fashion-MNIST subset, through the real training command.

Each run is ``python -m training.train`` in the model environment (as `camstream train`
runs it), into a temporary registry; embeddings go to the real cache, so the datasets'
shared images are embedded once per machine. The datasets and the runs are module
fixtures: every test reads the runs it needs, and no run happens twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from camstream.datasets import Dataset, Split
from camstream.fashion_mnist import fetch
from camstream.imaging import encode_jpeg, jpeg_to_model_input
from camstream.registry import Registry
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import ensure_assets
from camstream.stack.setup import ensure_conveyor, run_in_model_env
from camstream.stack.triton import locate_model_env
from tests.support.models import run_model_module
from training.quantize import (
    INT8_FILE,
    INT8_SIDECAR,
    MAX_F1_DROP,
    MIN_AGREEMENT,
    REPORT_FILE,
    TRAIN_CALIBRATION_IMAGES,
)

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


def test_quantize_gates_the_trained_version_on_agreement_and_test_macro_f1(
    tmp_path: Path,
    datasets: dict[str, Dataset],
    balanced_runs: list[tuple[dict[str, Any], Path]],
) -> None:
    # Given a copy of a trained version (the registry stays as it was), its dataset and
    # the frames `camstream quantize` gives any model: the sample videos, the conveyor
    # folder (Fashion-MNIST products, this model's domain) and the photos
    _, version = balanced_runs[0]
    folder = tmp_path / "version"
    shutil.copytree(version, folder)
    dataset = datasets["balanced"]
    cache = Settings().cache_dir
    assets = ensure_assets(cache)
    frames = [assets.vtest_video, assets.bikes_video, ensure_conveyor(cache)]
    frames += list(assets.photos.values())
    args: list[str | Path] = ["--json", "--onnx", folder / "model.onnx", "--frames", *frames]

    # When its INT8 variant is made and measured, with the dataset's test split
    args += ["--dataset-dir", dataset.root]
    result = run_model_module("training.quantize", *args, timeout_s=540)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    f1, timing = report["macro_f1"], report["timing"]
    verdict = "accepted" if report["accepted"] else "refused"
    print(
        f"\nINT8 of the trained {MODEL}: agreement {report['agreement']:.4f} on "
        f"{report['check_frames']} held-out frames ({report['calibration_frames']} calibrated); "
        f"macro-F1 FP32 {f1['macro_f1_fp32']:.4f} vs INT8 {f1['macro_f1_int8']:.4f} on "
        f"{f1['n']} test images (drop {f1['drop_points']:.2f} points); speed-up "
        f"{timing['speedup']:.2f}x (FP32 {timing['fp32_median_ms']:.1f} ms vs INT8 "
        f"{timing['int8_median_ms']:.1f} ms, batch {timing['batch']}); {verdict}"
    )

    # Then the report describes this run: the frames given, plus a train-split sample
    # in calibration, and the balanced set's whole test split
    assert report == json.loads((folder / REPORT_FILE).read_text())
    sources = report["frame_sources"]
    assert report["check_frames"] == sum(s["check"] for s in sources.values()) > 0
    assert sources["conveyor"]["check"] > 0 and sources["conveyor"]["calibration"] > 0
    train_sample = min(TRAIN_CALIBRATION_IMAGES, len(dataset.select(Split.TRAIN)))
    calibrated = sum(s["calibration"] for s in sources.values()) + train_sample
    assert report["calibration_frames"] == calibrated > train_sample
    assert f1["dataset"] == dataset.name and f1["split"] == "test"
    assert f1["n"] == len(dataset.select(Split.TEST)) > 0
    # and the FP32 figure is the version's own evaluation (same model, split and decode)
    evaluation = json.loads((folder / "evaluation" / "report.json").read_text())
    assert f1["macro_f1_fp32"] == pytest.approx(evaluation["macro_f1"], abs=1e-9)
    assert 0.0 < f1["macro_f1_fp32"] <= 1.0 and 0.0 < f1["macro_f1_int8"] <= 1.0
    drop = f1["macro_f1_fp32"] - f1["macro_f1_int8"]
    assert f1["drop_points"] == pytest.approx(drop * 100, abs=5e-4)
    assert (
        f"{f1['macro_f1_int8']:.4f} against FP32 {f1['macro_f1_fp32']:.4f}" in report["reasons"][1]
    )
    assert timing["speedup"] > 1.0
    # and the verdict is the gate's on both figures; only an accepted variant is written
    agreed = round(report["agreement"] * report["check_frames"]) / report["check_frames"]
    assert report["accepted"] == (agreed >= MIN_AGREEMENT and drop <= MAX_F1_DROP + 1e-12)
    assert report["gate"] == {"min_agreement": MIN_AGREEMENT, "max_f1_drop": MAX_F1_DROP}
    int8 = folder / INT8_FILE
    if report["accepted"]:
        assert result.returncode == 0 and int8.is_file()
        sidecar = json.loads((folder / INT8_SIDECAR).read_text())
        assert sidecar["fp32_sha256"] == report["fp32_sha256"] and sidecar["macro_f1"] == f1
    else:
        assert result.returncode == 1 and not int8.exists()
        assert not (folder / INT8_SIDECAR).exists()
        assert "refused the INT8 variant" in result.stderr
    assert not list(folder.glob(".model_int8.*"))
    assert not (version / REPORT_FILE).exists() and not (version / INT8_FILE).exists()


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
