"""Pseudo-label a dataset's unlabelled images with a model's confident predictions.

    .venv-model/bin/python -m training.pseudo --onnx P --labels P --dataset-dir D \
        --min-score S --ref MODEL:VERSION

Every unlabelled record (and every older pseudo label, which a newer model may redo)
is classified through the serving preprocessing (training.predict); those whose top
score is at least S get the label with ``label_source`` PSEUDO, ``pseudo_model`` the
ref and ``score``. Human and dataset labels are never touched: the change goes through
``camstream.datasets.relabel``, the one precedence rule. The dataset is saved
atomically (Dataset.save), once, at the end. Model env.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from camstream import modelrepo
from camstream.datasets import Dataset, LabelSource, Record, relabel
from camstream.errors import CamstreamError, ConfigError
from training.predict import Classifier, Image, Probs


@dataclass(frozen=True)
class PseudoResult:
    candidates: int  # unlabelled or pseudo-labelled records classified
    labelled: Counter[str]  # label -> records given it now
    below: int  # records whose top score was under the threshold


def candidates_of(records: Sequence[Record]) -> list[int]:
    """Indices of the records a model may label: unlabelled or pseudo-labelled."""
    return [
        i
        for i, r in enumerate(records)
        if not r.label or r.label_source in (LabelSource.NONE, LabelSource.PSEUDO)
    ]


def apply(
    records: list[Record],
    indices: list[int],
    probs: Probs,
    labels: list[str],
    min_score: float,
    ref: str,
) -> PseudoResult:
    """Relabel ``records[indices]`` in place from their probabilities."""
    best = probs.argmax(axis=1)
    labelled: Counter[str] = Counter()
    below = 0
    for row, index in enumerate(indices):
        score = float(probs[row, best[row]])
        if score < min_score:
            below += 1
            continue
        label = labels[int(best[row])]
        updated = relabel(records[index], label, LabelSource.PSEUDO, pseudo_model=ref, score=score)
        if updated is not records[index]:
            labelled[label] += 1
        records[index] = updated
    return PseudoResult(len(indices), labelled, below)


def pseudo_label(
    dataset: Dataset,
    onnx: Path,
    labels: list[str],
    min_score: float,
    ref: str,
    threads: int = 2,
) -> PseudoResult:
    """Label the dataset's candidates in memory (save it to keep them)."""
    if not 0.0 < min_score <= 1.0:
        raise ConfigError(f"--min-score {min_score}: give a probability in (0, 1]")
    if not ref:
        raise ConfigError("--ref MODEL:VERSION is required: pseudo labels name their model")
    classifier = Classifier(onnx, threads)
    indices = candidates_of(dataset.records)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("pseudo-labelling", total=len(indices))

        def on_batch(inputs: Image, _probs: Probs) -> None:
            bar.advance(task, len(inputs))

        probs = classifier.predict_files(
            [dataset.image_path(dataset.records[i]) for i in indices], on_batch=on_batch
        )
    return apply(dataset.records, indices, probs, labels, min_score, ref)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training.pseudo", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--min-score", type=float, required=True)
    parser.add_argument("--ref", required=True, help="MODEL:VERSION, recorded on every label")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        dataset = Dataset.load(args.dataset_dir)
        result = pseudo_label(
            dataset,
            args.onnx,
            modelrepo.read_labels(args.labels),
            args.min_score,
            args.ref,
            args.threads,
        )
        dataset.save()
    except CamstreamError as exc:
        print(f"training.pseudo: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    total = sum(result.labelled.values())
    print(
        f"{dataset.name}: {result.candidates} unlabelled or pseudo-labelled images; "
        f"{total} labelled by {args.ref} at score >= {args.min_score}, "
        f"{result.below} below it"
    )
    for label, n in sorted(result.labelled.items()):
        print(f"  {label:<24} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
