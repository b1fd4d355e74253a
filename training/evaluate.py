"""Evaluate one exported model on one split of a dataset, with its baselines, in one run.

    .venv-model/bin/python -m training.evaluate --onnx P --labels P --dataset-dir D \
        --split test --out DIR [--champion-onnx P --champion-labels P --champion-ref R] [--ref R]

Writes into DIR:

    report.json        metrics (the keys of ``REPORT_KEYS``), baselines, latency, timings
    predictions.jsonl  one {"sha256", "path", "truth", "pred", "score"} per image, in
                       manifest order: the promotion gate pairs two models by sha256
    confusion.png      the confusion matrix, normalised per true class, with counts
    reliability.png    the reliability diagram, with the expected calibration error
    explain.html       right and wrong examples per class with occlusion heatmaps
                       (training.explain), and their images under explain/

Every image goes through ``training.predict.load_model_input``, the serving path. The
baselines see the same images in the same run: the majority class of the train split,
logistic regression on raw pixels (28x28 grey made from the same model input,
standardised, fitted on at most ``MAX_LOGREG_TRAIN`` train images, the number used is in
the report), and the champion, whose predictions are compared with the truth by label
name. Macro-F1 is the mean F1 over the classes present in the split's ground truth, for
the model and every baseline alike, so the numbers compare.

Runs in the model environment (onnxruntime, scikit-learn, matplotlib, rich); the
numpy-only functions (``expected_calibration_error``, ``reliability_bins``,
``pixel_features``, ``majority_label``) also import in the application env.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.datasets import Dataset, DatasetError, Record, Split
from camstream.errors import CamstreamError, ConfigError
from training.predict import BATCH, Classifier, Image, Probs, load_model_inputs

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.jsonl"
CONFUSION_FILE = "confusion.png"
RELIABILITY_FILE = "reliability.png"
EXPLAIN_FILE = "explain.html"
REPORT_KEYS = (
    "model",
    "dataset",
    "dataset_manifest_sha256",
    "split",
    "n",
    "labels",
    "per_class",
    "macro_f1",
    "accuracy",
    "ece",
    "latency_ms_per_image",
    "baselines",
    "figures",
)
ECE_BINS = 15
PIXEL_SIDE = 28
# Logistic regression on pixels is a baseline, not a contender: 5000 images fit in about
# 8 s on one core and reach about 0.82 accuracy on Fashion-MNIST (the full train set ~0.84).
MAX_LOGREG_TRAIN = 5000
LOGREG_SEED = 0
# Strong L2 on 784 standardised pixels: on 5000 Fashion-MNIST images C=0.01 reaches 0.824
# test accuracy against 0.792 for C=1, in 200 lbfgs iterations.
LOGREG_C = 0.01
LOGREG_MAX_ITER = 200
# The column of predictions outside the split's classes (a model with other labels).
OTHER = "(other)"

Champion = tuple[str, Path, list[str]]  # (ref, model.onnx, its labels)
Floats = npt.NDArray[np.float64]


# Numpy-only pieces (tested in the application env) -----------------------------------


def reliability_bins(
    confidence: Sequence[float] | Floats,
    correct: Sequence[bool] | npt.NDArray[np.bool_],
    bins: int = ECE_BINS,
) -> list[dict[str, float]]:
    """Equal-width confidence bins over [0, 1]: each bin's bounds, count, mean
    confidence and accuracy (empty bins have count 0 and NaN means)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} differ in shape")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes in the first bin
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        out.append(
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "n": n,
                "confidence": float(conf[members].mean()) if n else float("nan"),
                "accuracy": float(hit[members].mean()) if n else float("nan"),
            }
        )
    return out


def expected_calibration_error(
    confidence: Sequence[float] | Floats,
    correct: Sequence[bool] | npt.NDArray[np.bool_],
    bins: int = ECE_BINS,
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins of the
    top-1 confidence (0 = a model exactly as sure as it is right)."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(b["n"] for b in table)
    if total == 0:
        return 0.0
    gap = sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in table if b["n"])
    return float(gap / total)


def pixel_features(images: Image) -> npt.NDArray[np.float32]:
    """Raw-pixel features of model inputs [N, 224, 224, 3]: grey, 28x28 (INTER_AREA),
    scaled to [0, 1], flattened to [N, 784]."""
    out = np.empty((len(images), PIXEL_SIDE * PIXEL_SIDE), dtype=np.float32)
    for i, rgb in enumerate(images):
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, (PIXEL_SIDE, PIXEL_SIDE), interpolation=cv2.INTER_AREA)
        out[i] = small.reshape(-1).astype(np.float32) / 255.0
    return out


def majority_label(labels: Sequence[str]) -> str:
    """The most common label; ties go to the first in sorted order (deterministic)."""
    if not labels:
        raise ValueError("no labels to take the majority of")
    counts = Counter(labels)
    best = max(counts.values())
    return min(label for label, n in counts.items() if n == best)


def split_classes(model_labels: Sequence[str], truth: Sequence[str]) -> list[str]:
    """The classes of the split's ground truth: in the model's label order, then any the
    model does not know, sorted."""
    present = set(truth)
    known = [label for label in model_labels if label in present]
    return known + sorted(present - set(model_labels))


def capped_sample(records: Sequence[Record], cap: int, seed: int = LOGREG_SEED) -> list[Record]:
    """At most ``cap`` records, a seeded random sample kept in manifest order."""
    if len(records) <= cap:
        return list(records)
    chosen = random.Random(seed).sample(range(len(records)), cap)
    return [records[i] for i in sorted(chosen)]


# Metrics and figures (scikit-learn, matplotlib: model env) -----------------------------


def classification_metrics(
    truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """Per-class precision/recall/F1/support, macro-F1 over ``classes`` and accuracy."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=list(classes), zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }
    macro = f1_score(truth, pred, labels=list(classes), average="macro", zero_division=0)
    return {
        "per_class": per_class,
        "macro_f1": float(macro),
        "accuracy": float(accuracy_score(truth, pred)),
    }


def confusion(
    truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Counts [true class, predicted class]; predictions outside ``classes`` are one
    extra column, ``OTHER``."""
    from sklearn.metrics import confusion_matrix

    known = set(classes)
    mapped = [p if p in known else OTHER for p in pred]
    columns = list(classes) + ([OTHER] if OTHER in mapped else [])
    matrix = confusion_matrix(truth, mapped, labels=columns)
    return np.asarray(matrix[: len(classes)], dtype=np.int64), columns


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    matrix: npt.NDArray[np.int64],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    path: Path,
) -> None:
    """Heatmap of the row-normalised matrix (recall on the diagonal), each cell labelled
    with its count and share."""
    plt = _pyplot()
    totals = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(totals, 1)
    side = max(4.5, 0.62 * len(columns) + 2.5)
    fig, ax = plt.subplots(figsize=(side, max(4.0, 0.55 * len(rows) + 2.2)), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fontsize = 9 if len(columns) <= 10 else 7
    for r in range(matrix.shape[0]):
        for c in range(matrix.shape[1]):
            if matrix[r, c] == 0:
                continue
            colour = "white" if share[r, c] > 0.55 else "black"
            ax.text(
                c,
                r,
                f"{matrix[r, c]}\n{share[r, c]:.0%}",
                ha="center",
                va="center",
                color=colour,
                fontsize=fontsize,
            )
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=40, ha="right")
    ax.set_yticks(
        range(len(rows)), labels=[f"{r} ({int(totals[i, 0])})" for i, r in enumerate(rows)]
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(bins: list[dict[str, float]], ece: float, title: str, path: Path) -> None:
    """Accuracy against confidence per bin beside the diagonal of perfect calibration,
    with how many predictions fall in each bin underneath."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.2, 5.6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = bins[0]["hi"] - bins[0]["lo"]
    centres = [b["lo"] + width / 2 for b in bins]
    filled = [b for b in bins if b["n"]]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    centres_f = [b["lo"] + width / 2 for b in filled]
    accuracy = [b["accuracy"] for b in filled]
    ax.bar(centres_f, accuracy, width=width * 0.9, color="#4c72b0", label="accuracy in bin")
    # the gap up (over-confident) or down (under-confident) to the bin's mean confidence
    ax.bar(
        centres_f,
        [b["confidence"] - b["accuracy"] for b in filled],
        bottom=accuracy,
        width=width * 0.9,
        color="#c8402f",
        alpha=0.35,
        edgecolor="#c8402f",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {ece:.3f} ({len(bins)} bins)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, [b["n"] for b in bins], width=width * 0.9, color="#999999")
    hist.set_xlabel("top-1 confidence")
    hist.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The run ------------------------------------------------------------------------------


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr, or a do-nothing stand-in."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def _logreg_baseline(
    dataset: Dataset,
    test_features: npt.NDArray[np.float32],
    truth: list[str],
    classes: list[str],
    max_train: int,
    progress: Any,
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    available = dataset.select(Split.TRAIN)
    if not available:
        return {"macro_f1": None, "accuracy": None, "train_images": 0, "note": "no train split"}
    chosen = capped_sample(available, max_train)
    task = progress.add_task("logreg baseline: train images", total=len(chosen))
    parts = []
    for start in range(0, len(chosen), BATCH):
        group = chosen[start : start + BATCH]
        parts.append(pixel_features(load_model_inputs([dataset.image_path(r) for r in group])))
        progress.advance(task, len(group))
    features = np.concatenate(parts)
    labels = [r.label for r in chosen]
    result: dict[str, Any] = {"train_images": len(chosen), "train_images_available": len(available)}
    if len(set(labels)) < 2:  # one class: the only possible prediction
        pred = [labels[0]] * len(truth)
        result["note"] = "one class in the train sample: predicts it"
    else:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=LOGREG_MAX_ITER, C=LOGREG_C)
        )
        # One BLAS thread: measured 2.4x faster than two for this size on the 2-core
        # machine; a baseline need not converge to the last digit (no warnings).
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(features, labels)
        result.update({"C": LOGREG_C, "max_iter": LOGREG_MAX_ITER})
        pred = [str(p) for p in model.predict(test_features)]
    metrics = classification_metrics(truth, pred, classes)
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"], **result}


def _majority_baseline(dataset: Dataset, truth: list[str], classes: list[str]) -> dict[str, Any]:
    train = [r.label for r in dataset.select(Split.TRAIN)]
    # Without a train split the majority of the evaluated split stands in: the strongest
    # constant predictor, so a harder baseline to beat, never an easier one.
    source = "train" if train else "evaluated split (no train split)"
    label = majority_label(train or truth)
    metrics = classification_metrics(truth, [label] * len(truth), classes)
    return {
        "macro_f1": metrics["macro_f1"],
        "accuracy": metrics["accuracy"],
        "label": label,
        "fitted_on": source,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate(
    onnx: Path,
    labels: list[str],
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    champion: Champion | None,
    ref: str,
    *,
    threads: int = 2,
    max_train: int = MAX_LOGREG_TRAIN,
    explain_per_class: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``onnx`` (class names ``labels``) on the labelled images of ``split``,
    write the report, predictions and figures into ``out_dir``, and return the report.

    ``champion`` is (ref, model.onnx, labels) of the version to compare with, or None;
    ``ref`` names the evaluated model in the report ("" = its ONNX path).
    ``explain_per_class`` right and as many wrong examples per class go on the
    explanation page (0: no page).
    """
    from training import explain

    started = time.monotonic()
    records = dataset.select(split)
    if not records:
        raise DatasetError(
            f"dataset {dataset.name!r} has no labelled images in split {str(split)!r}; "
            "label some, or evaluate another split"
        )
    classifier = Classifier(onnx, threads)
    if classifier.num_classes not in (0, len(labels)):
        raise ConfigError(
            f"{onnx} outputs {classifier.num_classes} classes but its labels file has "
            f"{len(labels)}: pass the labels of this model"
        )
    rival = Classifier(champion[1], threads) if champion else None
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [dataset.image_path(r) for r in records]
    truth = [r.label for r in records]
    classes = split_classes(labels, truth)

    features: list[npt.NDArray[np.float32]] = []
    rival_probs: list[Probs] = []
    with _progress(progress) as bar:
        task = bar.add_task(f"evaluate {dataset.name}/{split}", total=len(paths))

        def on_batch(inputs: Image, _probs: Probs) -> None:
            features.append(pixel_features(inputs))
            if rival is not None:
                rival_probs.append(rival.predict(inputs))
            bar.advance(task, len(inputs))

        probs = classifier.predict_files(paths, on_batch=on_batch)
        predicted_at = time.monotonic()
        best = probs.argmax(axis=1)
        pred = [labels[i] for i in best]
        score = probs[np.arange(len(best)), best].astype(np.float64)
        metrics = classification_metrics(truth, pred, classes)
        correct = np.array([t == p for t, p in zip(truth, pred, strict=True)])
        bins = reliability_bins(score, correct)
        ece = expected_calibration_error(score, correct)

        baselines: dict[str, Any] = {
            "majority": _majority_baseline(dataset, truth, classes),
            "logreg_pixels": _logreg_baseline(
                dataset, np.concatenate(features), truth, classes, max_train, bar
            ),
            "champion": None,
        }
        if champion is not None:
            champ_labels = champion[2]
            champ_pred = [champ_labels[i] for i in np.concatenate(rival_probs).argmax(axis=1)]
            champ_metrics = classification_metrics(truth, champ_pred, classes)
            baselines["champion"] = {
                "ref": champion[0],
                "macro_f1": champ_metrics["macro_f1"],
                "accuracy": champ_metrics["accuracy"],
            }
        baselines_at = time.monotonic()

        latency = classifier.latency(load_model_inputs(paths[:BATCH]))
        measured_at = time.monotonic()
        name = ref or str(onnx)
        matrix, columns = confusion(truth, pred, classes)
        title = f"{name} on {dataset.name}/{split} ({len(records)} images)"
        plot_confusion(matrix, classes, columns, title, out_dir / CONFUSION_FILE)
        plot_reliability(bins, ece, title, out_dir / RELIABILITY_FILE)
        figures = {"confusion": CONFUSION_FILE, "reliability": RELIABILITY_FILE}
        if explain_per_class > 0:
            figures["explain"] = explain.write_explanation(
                out_dir,
                classifier,
                labels,
                paths,
                truth,
                pred,
                [float(s) for s in score],
                classes,
                per_class=explain_per_class,
                title=title,
                progress=bar,
            )
    report: dict[str, Any] = {
        "model": name,
        "dataset": dataset.name,
        "dataset_manifest_sha256": dataset.manifest_sha256(),
        "split": str(split),
        "n": len(records),
        "labels": list(labels),
        **metrics,
        "ece": ece,
        "latency_ms_per_image": latency,
        "baselines": baselines,
        "figures": figures,
        "classes_evaluated": classes,
        "calibration_bins": [b for b in bins if b["n"]],
        "threads": threads,
        "timings_s": {
            "predict": round(predicted_at - started, 3),
            "baselines": round(baselines_at - predicted_at, 3),
            "latency": round(measured_at - baselines_at, 3),
            "figures_and_explanation": round(time.monotonic() - measured_at, 3),
            "total": round(time.monotonic() - started, 3),
        },
    }
    lines = (
        json.dumps({"sha256": r.sha256, "path": r.path, "truth": t, "pred": p, "score": float(s)})
        for r, t, p, s in zip(records, truth, pred, score, strict=True)
    )
    _write_atomic(out_dir / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    _write_atomic(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    """A few lines a person reads at the end of a run."""
    base = report["baselines"]
    rows = [
        f"{report['model']} on {report['dataset']}/{report['split']}: {report['n']} images",
        f"  macro-F1 {report['macro_f1']:.3f}   accuracy {report['accuracy']:.3f}   "
        f"ECE {report['ece']:.3f}",
    ]
    for key, title in (
        ("majority", "majority class"),
        ("logreg_pixels", "logreg on pixels"),
        ("champion", "champion"),
    ):
        entry = base.get(key)
        if entry is None or entry.get("macro_f1") is None:
            continue
        label = f"{title} {entry['ref']}" if key == "champion" else title
        rows.append(
            f"  {label:<26} macro-F1 {entry['macro_f1']:.3f}   accuracy {entry['accuracy']:.3f}"
        )
    worst = sorted(report["per_class"].items(), key=lambda kv: kv[1]["f1"])[:3]
    rows.append("  weakest classes: " + ", ".join(f"{k} (F1 {v['f1']:.2f})" for k, v in worst))
    lat = report["latency_ms_per_image"]
    rows.append(
        f"  latency per image: {lat['batch1_median']:.1f} ms at batch 1, "
        f"{lat['batch32_per_image']:.1f} ms at batch 32 ({report['threads']} threads)"
    )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the model.onnx to evaluate")
    parser.add_argument("--labels", type=Path, required=True, help="its labels.txt")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="the dataset folder")
    parser.add_argument("--split", default=str(Split.TEST), choices=[str(s) for s in Split if s])
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--champion-onnx", type=Path)
    parser.add_argument("--champion-labels", type=Path)
    parser.add_argument("--champion-ref", default="")
    parser.add_argument("--ref", default="", help="the model's name in the report (MODEL:N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=MAX_LOGREG_TRAIN)
    parser.add_argument("--explain-per-class", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.champion_onnx is None) != (args.champion_labels is None):
        parser.error("--champion-onnx and --champion-labels go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    try:
        dataset = Dataset.load(args.dataset_dir)
        champion: Champion | None = None
        if args.champion_onnx is not None:
            champion = (
                args.champion_ref or str(args.champion_onnx),
                args.champion_onnx,
                modelrepo.read_labels(args.champion_labels),
            )
        report = evaluate(
            args.onnx,
            modelrepo.read_labels(args.labels),
            dataset,
            Split(args.split),
            args.out,
            champion,
            args.ref,
            threads=args.threads,
            max_train=args.max_train,
            explain_per_class=args.explain_per_class,
            progress=not args.no_progress,
        )
    except CamstreamError as exc:
        print(f"training.evaluate: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(summary(report))
    print(f"report: {args.out / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
