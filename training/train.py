"""Train a new version of a model: ``python -m training.train --config CONFIG.json``.

CONFIG is a training.config.TrainConfig (``camstream train`` writes it). The stages, each
timed: load and check the dataset (train/val/test, human and dataset labels, pseudo
ones only when asked); embed every image once with the frozen EfficientNet-Lite0 trunk
(training.embed, cached by image hash); fit a new head on the pooled features and,
with ``fine_tune``, the conv head on the cached activations (training.fit); export the
whole classifier (uint8 IMAGE -> PROBS over the dataset's classes) to ONNX and check it
against torch; write labels, config, weights, learning curves and the drift reference
profile; evaluate on the test split (training.evaluate) and write the model card; then
register the version and point the ``candidate`` alias at it.

Everything is written into a registry staging folder, so a run that fails at any stage
leaves the registry as it was: bad input (an empty split, one class, missing or corrupt
images) ends with the reason on stderr and exit 2, anything else with exit 1.

Model environment only (torch, onnxruntime, scikit-learn, matplotlib, rich).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from camstream import modelrepo
from camstream.datasets import Dataset, DatasetError, LabelSource, Record, Split
from camstream.errors import CamstreamError, ConfigError
from training.config import TrainConfig
from training.embed import EmbedStats, View

ALIAS = "candidate"
LABELS_FILE = "labels.txt"
CONFIG_FILE = "training_config.json"
WEIGHTS_FILE = "weights.pt"
CURVES_FILE = "learning_curves.png"
PROFILE_FILE = "reference_profile.json"
EVALUATION_DIR = "evaluation"


class TrainError(ConfigError):
    """Training cannot start or go on with this input; the message says what to fix."""


@dataclass(frozen=True)
class Splits:
    """The labelled records used, per split, and the class list (sorted)."""

    classes: list[str]
    train: list[Record]
    val: list[Record]
    test: list[Record]

    def labels(self, records: list[Record]) -> np.ndarray[Any, np.dtype[np.int64]]:
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[r.label] for r in records], dtype=np.int64)


@dataclass
class Timer:
    """Wall seconds per stage, in order."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - started, 3)


def select_splits(dataset: Dataset, include_pseudo: bool) -> Splits:
    """The records of each split, checked: every split has images, there are at least
    two classes, every class trains, val and test hold no class the model cannot
    predict, and every image file is there."""
    chosen = {
        split: dataset.select(split, include_pseudo=include_pseudo)
        for split in (Split.TRAIN, Split.VAL, Split.TEST)
    }
    # Pseudo labels may train a model, never grade one.
    for split in (Split.VAL, Split.TEST):
        chosen[split] = [r for r in chosen[split] if r.label_source != LabelSource.PSEUDO]
    name = dataset.name
    empty = [str(split) for split, records in chosen.items() if not records]
    if empty:
        raise TrainError(
            f"dataset {name!r} has no labelled images in split(s) {', '.join(empty)}: label "
            "more images, or re-split the dataset (each of train, val and test needs some)"
        )
    classes = sorted({r.label for r in chosen[Split.TRAIN]})
    if len(classes) < 2:
        raise TrainError(
            f"dataset {name!r}: the train split has {len(classes)} class "
            f"({', '.join(classes) or 'none'}); a classifier needs at least two: label "
            "images of another class"
        )
    unknown = sorted({r.label for s in (Split.VAL, Split.TEST) for r in chosen[s]} - set(classes))
    if unknown:
        raise TrainError(
            f"dataset {name!r}: classes {unknown} are in val/test but not in train: label "
            "training images of them, or remove their labels"
        )
    missing = [r.path for rs in chosen.values() for r in rs if not dataset.image_path(r).is_file()]
    if missing:
        raise TrainError(
            f"dataset {name!r} at {dataset.root}: {len(missing)} image(s) missing (first: "
            f"{missing[:5]}); restore them, or remove their records"
        )
    return Splits(classes, chosen[Split.TRAIN], chosen[Split.VAL], chosen[Split.TEST])


def _items(dataset: Dataset, records: list[Record]) -> list[tuple[str, Path]]:
    return [(r.sha256, dataset.image_path(r)) for r in records]


def embed_all(embedder: Any, dataset: Dataset, splits: Splits, config: TrainConfig) -> EmbedStats:
    """Cache the trunk outputs training needs (a rich progress bar on stderr)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    views = [View.ORIGINAL, *(View(a) for a in config.augment)]
    jobs = [(_items(dataset, splits.train), views), (_items(dataset, splits.val), [View.ORIGINAL])]
    computed, cached, seconds = 0, 0, 0.0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False, redirect_stdout=False) as bar:
        task = bar.add_task("embed", total=None, rate="")
        for items, job_views in jobs:
            started = time.monotonic()
            base = computed

            def report(done: int, total: int, base: int = base, started: float = started) -> None:
                elapsed = time.monotonic() - started
                rate = f"{done / elapsed:.0f} img/s" if done and elapsed > 0 else ""
                bar.update(task, completed=base + done, total=base + total, rate=rate)

            stats = embedder.ensure(items, job_views, config.fine_tune, report)
            computed += stats.computed
            cached += stats.cached
            seconds += stats.seconds
    return EmbedStats(computed=computed, cached=cached, seconds=seconds)


def _feature_views(embedder: Any, records: list[Record], views: list[View]) -> list[np.ndarray]:
    shas = [r.sha256 for r in records]
    return [embedder.features(shas, view) for view in views]


def _activation_views(embedder: Any, records: list[Record], views: list[View]) -> list[np.ndarray]:
    shas = [r.sha256 for r in records]
    return [embedder.activations(shas, view) for view in views]


def profile_sample(dataset: Dataset, records: list[Record], count: int, seed: int) -> Iterator[Any]:
    """Up to ``count`` training images (BGR, as a camera would send them), by seed."""
    chosen = sorted(records, key=lambda r: r.path)
    random.Random(f"{seed}:profile").shuffle(chosen)
    for record in chosen[:count]:
        data = np.frombuffer(dataset.image_path(record).read_bytes(), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is not None:
            yield np.asarray(image, dtype=np.uint8)


def write_profile(
    onnx: Path, labels: list[str], images: Iterator[Any], model: str, version: str, path: Path
) -> str:
    import onnxruntime as ort

    from training.baseline import profile_images

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    profile = profile_images(onnx, labels, session, images, model, version, ["training-sample"])
    path.write_text(json.dumps(profile, indent=1))
    return str(profile["id"])


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, export, evaluate and register; the summary (ref, timings, metrics)."""
    import torch

    from camstream.registry import Registry, code_version
    from training import export, fit
    from training.embed import Embedder

    timer = Timer()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    cv2.setNumThreads(1)
    with timer.stage("load"):
        dataset = Dataset.load(config.dataset_dir)
        splits = select_splits(dataset, config.include_pseudo)
        classes = splits.classes
    with timer.stage("embed"):
        embedder = Embedder(config.cache_dir, config.threads)
        stats = embed_all(embedder, dataset, splits, config)
    views = [View.ORIGINAL, *(View(a) for a in config.augment)]
    y_train, y_val = splits.labels(splits.train), splits.labels(splits.val)
    with timer.stage("train_head"):
        train_views = _feature_views(embedder, splits.train, views)
        (val_x,) = _feature_views(embedder, splits.val, [View.ORIGINAL])
        torch.manual_seed(config.seed)
        head = fit.build_head(config, len(classes), train_views[0].shape[1])
        head_fit = fit.fit(
            head,
            train_views,
            y_train,
            val_x,
            y_val,
            config,
            len(classes),
            config.max_epochs,
            config.lr,
            config.seed,
            config.patience,
            lambda e, f1: _log(f"head epoch {e}: val macro-F1 {f1:.4f}"),
        )
    weights = export.weights_path()
    backbone = export.load_backbone(weights)
    fine_fit = None
    if config.fine_tune:
        with timer.stage("fine_tune"):
            acts = _activation_views(embedder, splits.train, views)
            (val_acts,) = _activation_views(embedder, splits.val, [View.ORIGINAL])
            module = fit.conv_head_module(backbone, head_fit.module)
            fine_fit = fit.fit(
                module,
                acts,
                y_train,
                val_acts,
                y_val,
                config,
                len(classes),
                config.fine_tune_epochs,
                config.fine_tune_lr,
                config.seed + 1,
                config.fine_tune_epochs,
                lambda e, f1: _log(f"fine-tune epoch {e}: val macro-F1 {f1:.4f}"),
            )
            backbone._conv_head.load_state_dict(module.conv.state_dict())
            backbone._bn1.load_state_dict(module.bn.state_dict())
            head = module.head
            del acts, val_acts
    backbone._fc = head
    backbone._dropout = torch.nn.Identity()

    registry = Registry(config.registry_dir)
    staging = registry.staging(config.model)
    try:
        with timer.stage("export"):
            classifier = export.image_classifier(backbone)
            onnx = staging / modelrepo.ONNX_FILE
            export.export_onnx(classifier, onnx)
            max_diff = export.verify(classifier, onnx, len(classes))
            (staging / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes))
            (staging / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
            state = {"head": head.state_dict()}
            if fine_fit is not None:
                state["conv_head"] = backbone._conv_head.state_dict()
                state["bn1"] = backbone._bn1.state_dict()
            torch.save(state, staging / WEIGHTS_FILE)
            fit.plot_curves(
                head_fit.curve, fine_fit.curve if fine_fit else None, staging / CURVES_FILE
            )
            onnx_sha = export.sha256_file(onnx)
        with timer.stage("profile"):
            sample = profile_sample(dataset, splits.train, config.profile_frames, config.seed)
            profile_id = write_profile(
                onnx, classes, sample, config.model, onnx_sha[:12], staging / PROFILE_FILE
            )
        with timer.stage("evaluate"):
            report = _evaluate(config, dataset, onnx, classes, staging)
        summary = _summary(config, dataset, splits, stats, head_fit, fine_fit, report)
        summary.update(onnx_sha256=onnx_sha, export_max_abs_diff=max_diff, profile_id=profile_id)
        code = code_version()
        with timer.stage("card"):
            _card(config, dataset, staging, summary, report, timer.stages, code)
        with timer.stage("register"):
            version = registry.register(
                config.model,
                staging,
                dataset=dataset.name,
                dataset_manifest_sha256=dataset.manifest_sha256(),
                code_version=code,
            )
            metrics = {
                "test_macro_f1": report["macro_f1"],
                "val_macro_f1": summary["val_macro_f1"],
            }
            registry.set_alias(config.model, ALIAS, version.number, "trained", metrics)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["ref"] = version.ref
    summary["digest"] = version.digest
    summary["timings_s"] = timer.stages
    return summary


def _log(message: str) -> None:
    sys.stderr.write(f"train: {message}\n")
    sys.stderr.flush()


def _evaluate(
    config: TrainConfig, dataset: Dataset, onnx: Path, classes: list[str], staging: Path
) -> dict[str, Any]:
    from training.evaluate import evaluate

    champion = None
    if config.champion_onnx and config.champion_labels and config.champion_ref:
        champion_labels = modelrepo.read_labels(config.champion_labels)
        champion = (config.champion_ref, config.champion_onnx, champion_labels)
    return evaluate(
        onnx,
        classes,
        dataset,
        Split.TEST,
        staging / EVALUATION_DIR,
        champion,
        f"{config.model}:new",
        threads=config.threads,
        explain_per_class=config.explain_per_class,
    )


def _card(
    config: TrainConfig,
    dataset: Dataset,
    staging: Path,
    summary: dict[str, Any],
    report: dict[str, Any],
    timings: dict[str, float],
    code: str,
) -> None:
    from training.card import write_card

    outcome = {key: summary[key] for key in ("images", "embedding", "val_macro_f1", "onnx_sha256")}
    for step in ("head", "fine_tune"):
        fitted = summary[step]
        outcome[step] = (
            None if fitted is None else {k: v for k, v in fitted.items() if k != "curve"}
        )
    write_card(
        staging,
        model=config.model,
        dataset_name=dataset.name,
        dataset_manifest_sha256=dataset.manifest_sha256(),
        counts=dataset.counts(),
        label_sources=dataset.source_counts(),
        training_config={**config.model_dump(mode="json"), "outcome": outcome},
        report=report,
        timings=dict(timings),
        code_version=code,
    )


def _summary(
    config: TrainConfig,
    dataset: Dataset,
    splits: Splits,
    stats: EmbedStats,
    head_fit: Any,
    fine_fit: Any,
    report: dict[str, Any],
) -> dict[str, Any]:
    best = fine_fit if fine_fit is not None and fine_fit.best_epoch > 0 else head_fit
    baselines = report.get("baselines", {})
    return {
        "model": config.model,
        "dataset": dataset.name,
        "classes": splits.classes,
        "images": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "embedding": {
            "computed": stats.computed,
            "cached": stats.cached,
            "seconds": round(stats.seconds, 3),
            "images_per_s": round(stats.images_per_s, 1),
        },
        "head": {
            "best_epoch": head_fit.best_epoch,
            "epochs": len(head_fit.curve.train_loss),
            "val_macro_f1": head_fit.best_val_macro_f1,
            "curve": head_fit.curve.to_json(),
        },
        "fine_tune": None
        if fine_fit is None
        else {
            "best_epoch": fine_fit.best_epoch,
            "epochs": len(fine_fit.curve.train_loss),
            "val_macro_f1": fine_fit.best_val_macro_f1,
            "curve": fine_fit.curve.to_json(),
        },
        "val_macro_f1": best.best_val_macro_f1,
        "test_macro_f1": report["macro_f1"],
        "test_accuracy": report.get("accuracy"),
        "baselines": {
            name: (value or {}).get("macro_f1") for name, value in baselines.items() if value
        },
    }


def describe(summary: dict[str, Any]) -> str:
    """The lines a person reads at the end of a run."""
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items())
    emb = summary["embedding"]
    lines = [
        f"{summary['ref']}  (digest {summary['digest']}, alias {ALIAS})",
        f"images: {summary['images']}; embedded {emb['computed']} "
        f"({emb['images_per_s']:.0f} img/s), {emb['cached']} from the cache",
        f"val macro-F1 {summary['val_macro_f1']:.4f}; test macro-F1 "
        f"{summary['test_macro_f1']:.4f}, baselines "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary["baselines"].items()),
        f"stages: {timings}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    parser.add_argument("--summary", type=Path, help="also write the run's summary here (JSON)")
    return parser.parse_args(argv)


def load_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.model_validate_json(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read training config {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        raise ConfigError(f"training config {path} is not valid: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before torch loads OpenMP: idle threads sleep instead of spinning. On 2 shared
    # cores, spinning threads measured 10-40x slower optimiser steps whenever another
    # process was busy; sleeping ones cost little when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        summary = run(load_config(args.config))
    except (ConfigError, DatasetError) as exc:
        sys.stderr.write(f"training.train: {exc}\n")
        return 2
    except CamstreamError as exc:
        sys.stderr.write(f"training.train: {exc}\n")
        return 1
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(describe(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
