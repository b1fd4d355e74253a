"""The model card (training.card) and the pseudo-label rule (training.pseudo.apply)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camstream.datasets import LabelSource, Record, Split
from training import card, pseudo


def _report(**overrides: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "model": "fashion:2",
        "dataset": "fm",
        "dataset_manifest_sha256": "ab" * 32,
        "split": "test",
        "n": 40,
        "labels": ["bag", "coat"],
        "per_class": {
            "bag": {"precision": 0.9, "recall": 0.95, "f1": 0.92, "support": 20},
            "coat": {"precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 20},
        },
        "macro_f1": 0.785,
        "accuracy": 0.8,
        "ece": 0.12,
        "latency_ms_per_image": {"batch1_median": 9.1, "batch32_per_image": 4.2},
        "baselines": {
            "majority": {"macro_f1": 0.33, "accuracy": 0.5},
            "logreg_pixels": {"macro_f1": 0.7, "accuracy": 0.71, "train_images": 100},
            "champion": {"ref": "fashion:1", "macro_f1": 0.75, "accuracy": 0.77},
        },
        "figures": {},
        "threads": 2,
    }
    report.update(overrides)
    return report


def _write(tmp_path: Path, report: dict[str, Any], sources: dict[str, int]) -> dict[str, Any]:
    card.write_card(
        tmp_path,
        model="fashion:2",
        dataset_name="fm",
        dataset_manifest_sha256="ab" * 32,
        counts={"bag": {"train": 400, "test": 20}, "coat": {"train": 12, "test": 20}},
        label_sources=sources,
        training_config={"seed": 7, "head": "linear"},
        report=report,
        timings={"embed": 3.2},
        code_version="v1-3-gabc",
    )
    return dict(json.loads((tmp_path / card.CARD_JSON).read_text()))


def test_card_names_thin_weak_pseudo_and_uncalibrated_classes(tmp_path: Path) -> None:
    written = _write(tmp_path, _report(), {"dataset": 400, "pseudo": 32})
    limits = " ".join(written["limitations"])
    assert "coat" in limits and "Few training images" in limits  # 12 train images
    assert "coat (F1 0.65)" in limits and "bag (F1" not in limits
    assert "32 of its dataset's labels are pseudo" in limits
    assert "ECE 0.120" in limits
    assert "Do not promote" not in limits  # it beats logreg on pixels
    markdown = (tmp_path / card.CARD_MD).read_text()
    assert "| coat | 0.700 | 0.600 | 0.650 | 20 |" in markdown
    assert "champion fashion:1" in markdown and "v1-3-gabc" in markdown
    assert written["training"] == {"seed": 7, "head": "linear"}


def test_card_says_when_a_model_does_not_beat_pixels(tmp_path: Path) -> None:
    written = _write(tmp_path, _report(macro_f1=0.6), {"human": 10})
    assert any("Do not promote" in item for item in written["limitations"])


def _records() -> list[Record]:
    return [
        Record(path="images/0.png", sha256="0" * 64),  # unlabelled
        Record(path="images/1.png", sha256="1" * 64),  # unlabelled, low score
        Record(
            path="images/2.png",
            sha256="2" * 64,
            label="coat",
            label_source=LabelSource.HUMAN,
            split=Split.TRAIN,
        ),
        Record(
            path="images/3.png",
            sha256="3" * 64,
            label="bag",
            label_source=LabelSource.PSEUDO,
            pseudo_model="fashion:1",
            score=0.7,
        ),
    ]


def test_pseudo_labels_fill_confident_unlabelled_records_and_never_human_ones() -> None:
    # Given records and a model's probabilities over [bag, coat]
    records = _records()
    indices = pseudo.candidates_of(records)
    assert indices == [0, 1, 3]  # the human label is not even classified
    probs = np.array([[0.1, 0.9], [0.55, 0.45], [0.05, 0.95]], dtype=np.float32)
    # When applied at min score 0.8
    result = pseudo.apply(records, indices, probs, ["bag", "coat"], 0.8, "fashion:2")
    # Then confident ones are pseudo-labelled with model and score, the rest unchanged
    assert records[0].label == "coat" and records[0].label_source == LabelSource.PSEUDO
    assert records[0].pseudo_model == "fashion:2" and records[0].score == pytest.approx(0.9)
    assert records[1].label == "" and result.below == 1
    assert records[2] == _records()[2]
    assert records[3].label == "coat" and records[3].pseudo_model == "fashion:2"
    assert dict(result.labelled) == {"coat": 2}
