"""`python -m training.evaluate` and `training.pseudo` in the model environment, on a
tiny real Fashion-MNIST dataset with the exported pretrained model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest

from camstream import fashion_mnist, modelrepo
from camstream.datasets import Dataset, LabelSource, Split
from camstream.settings import Settings
from tests.support.models import run_model_module
from training.evaluate import REPORT_KEYS

pytestmark = pytest.mark.integration


def _model(settings: Settings) -> tuple[Path, Path]:
    onnx = settings.model_version_dir() / modelrepo.ONNX_FILE
    labels = modelrepo.labels_path(settings.model_repo, settings.model_name)
    assert onnx.is_file() and labels.is_file(), "run `camstream setup` (exports the model)"
    return onnx, labels


def _tiny(tmp_path: Path, settings: Settings) -> Dataset:
    """10 classes: 9 train and 1 val images each, 3 test images each (30 to evaluate)."""
    return fashion_mnist.fetch(
        tmp_path / "datasets", settings.cache_dir, "fm-tiny", train_per_class=10, test_per_class=3
    )


_run = run_model_module


def test_evaluate_writes_report_predictions_figures_and_baselines(tmp_path: Path) -> None:
    # Given a tiny real dataset and the pretrained model, which is also the "champion"
    settings = Settings()
    onnx, labels = _model(settings)
    dataset = _tiny(tmp_path, settings)
    out = tmp_path / "evaluation"
    # When it is evaluated on the test split
    result = _run(
        "training.evaluate",
        *("--onnx", onnx, "--labels", labels, "--dataset-dir", dataset.root),
        *("--split", "test", "--out", out, "--ref", "efficientnet_lite0:1"),
        *("--champion-onnx", onnx, "--champion-labels", labels, "--champion-ref", "champ:1"),
        *("--explain-per-class", "1", "--no-progress"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "macro-F1" in result.stdout and "logreg on pixels" in result.stdout
    # Then the report has every key of the spec and describes this run
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    tested = dataset.select(Split.TEST)
    assert report["n"] == len(tested) == 30
    assert report["dataset"] == "fm-tiny"
    assert report["dataset_manifest_sha256"] == dataset.manifest_sha256()
    assert len(report["labels"]) == 1000
    assert set(report["per_class"]) == set(fashion_mnist.LABELS)
    for key in ("batch1_median", "batch32_per_image"):
        assert report["latency_ms_per_image"][key] > 0
    assert 0.0 <= report["ece"] <= 1.0
    # and the baselines measured in the same run
    baselines = report["baselines"]
    assert baselines["majority"]["accuracy"] == pytest.approx(0.1)  # 3 of 30, any class
    assert baselines["logreg_pixels"]["train_images"] == 90
    assert baselines["logreg_pixels"]["accuracy"] > 0.4  # pixels separate these classes
    assert baselines["champion"]["ref"] == "champ:1"
    assert baselines["champion"]["macro_f1"] == pytest.approx(report["macro_f1"])
    # and one prediction per image, in manifest order, keyed by sha256
    lines = (out / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [p["sha256"] for p in predictions] == [r.sha256 for r in tested]
    assert [p["truth"] for p in predictions] == [r.label for r in tested]
    assert all(set(p) == {"sha256", "path", "truth", "pred", "score"} for p in predictions)
    # and the figures exist and decode
    for name in (report["figures"]["confusion"], report["figures"]["reliability"]):
        image = cv2.imread(str(out / name))
        assert image is not None and min(image.shape[:2]) > 300
    page = (out / report["figures"]["explain"]).read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert 10 <= len(sources) <= 20  # per class: its surest mistake, and right answer if any
    for src in sources:
        assert not Path(src).is_absolute()
        assert cv2.imread(str(out / src)) is not None


def test_evaluate_names_a_corrupt_image(tmp_path: Path) -> None:
    # Given a dataset with one test image overwritten by garbage
    settings = Settings()
    onnx, labels = _model(settings)
    dataset = _tiny(tmp_path, settings)
    broken = dataset.image_path(dataset.select(Split.TEST)[4])
    broken.chmod(0o644)
    broken.write_bytes(b"not an image")
    # When it is evaluated
    result = _run(
        "training.evaluate",
        *("--onnx", onnx, "--labels", labels, "--dataset-dir", dataset.root),
        *("--out", tmp_path / "evaluation", "--no-progress"),
    )
    # Then it fails with the file's name and writes no report
    assert result.returncode == 2, result.stderr[-2000:]
    assert broken.name in result.stderr and "corrupt" in result.stderr
    assert not (tmp_path / "evaluation" / "report.json").exists()


def test_pseudo_labels_only_unlabelled_images_and_marks_them(tmp_path: Path) -> None:
    # Given a tiny dataset whose test images lost their labels, but for one human label
    settings = Settings()
    onnx, labels = _model(settings)
    dataset = _tiny(tmp_path, settings)
    from dataclasses import replace

    tested = {r.path for r in dataset.select(Split.TEST)}
    human = sorted(tested)[0]
    dataset.records = [
        replace(r, label="", label_source=LabelSource.NONE, split=Split.NONE)
        if r.path in tested and r.path != human
        else replace(r, label="my-label", label_source=LabelSource.HUMAN)
        if r.path == human
        else r
        for r in dataset.records
    ]
    dataset.save()
    before = {r.path: r for r in Dataset.load(dataset.root).records}
    # When the pretrained model pseudo-labels it at a score almost every image reaches
    result = _run(
        "training.pseudo",
        *("--onnx", onnx, "--labels", labels, "--dataset-dir", dataset.root),
        *("--min-score", "0.01", "--ref", "efficientnet_lite0:1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Then the unlabelled images carry pseudo labels naming the model; nothing else moved
    after = {r.path: r for r in Dataset.load(dataset.root).records}
    pseudo = [r for r in after.values() if r.label_source == LabelSource.PSEUDO]
    assert 0 < len(pseudo) <= len(tested) - 1
    assert all(r.pseudo_model == "efficientnet_lite0:1" and r.score for r in pseudo)
    assert all(r.path in tested and r.label in modelrepo.read_labels(labels) for r in pseudo)
    assert after[human] == before[human]
    assert all(after[p] == before[p] for p in after if p not in tested)
    assert "labelled by efficientnet_lite0:1" in result.stdout
