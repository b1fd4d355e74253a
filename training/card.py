"""The model card of one version: card.json for programs, card.md for people.

Written by training.train into the version's staging folder, from what the run knows:
the dataset (name, manifest hash, counts per class and split, label sources), the
training config, the evaluation report (training.evaluate), the stage timings and the
code version. Limitations are derived from those numbers, not written by hand: the
classes it knows, pseudo labels in its data, thin classes, weak classes, calibration,
and whether it beats its baselines.

Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_JSON = "card.json"
CARD_MD = "card.md"
CARD_VERSION = 1
# A class with fewer training images than this is named in the limitations.
THIN_CLASS = 50
# A class with an F1 below this is named in the limitations.
WEAK_F1 = 0.8
# Above this expected calibration error the scores should not be read as probabilities.
ECE_WARN = 0.05


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _train_count(splits: Mapping[str, int]) -> int:
    return int(splits.get("train", 0))


def limitations(
    counts: Mapping[str, Mapping[str, int]],
    label_sources: Mapping[str, Any],
    report: Mapping[str, Any],
) -> list[str]:
    """Plain sentences on what the model cannot be trusted with, from the numbers."""
    classes = [c for c in report.get("labels", []) if c]
    out = [
        f"It knows only these {len(classes)} classes: {', '.join(classes)}. Anything else "
        "it sees is still given one of them; read a low score as 'none of these'."
    ]
    pseudo = int(label_sources.get("pseudo", 0)) if isinstance(label_sources, Mapping) else 0
    if pseudo:
        out.append(
            f"{pseudo} of its dataset's labels are pseudo labels (a model's own "
            "predictions), not a person's: errors a model made can be learned again."
        )
    thin = sorted(
        (label for label, splits in counts.items() if label and _train_count(splits) < THIN_CLASS),
    )
    if thin:
        out.append(
            f"Few training images (under {THIN_CLASS}) for: {', '.join(thin)}; expect "
            "those classes to be less reliable than the table says."
        )
    weak = [
        f"{label} (F1 {m['f1']:.2f})"
        for label, m in report.get("per_class", {}).items()
        if m.get("f1", 1.0) < WEAK_F1
    ]
    if weak:
        out.append(f"Weak classes on the test set: {', '.join(weak)}.")
    ece = report.get("ece")
    if ece is not None and ece > ECE_WARN:
        out.append(
            f"Its scores are not calibrated (ECE {ece:.3f}): a score of 0.9 does not mean "
            "right 9 times in 10; check reliability.png before setting a threshold on it."
        )
    logreg = (report.get("baselines") or {}).get("logreg_pixels") or {}
    if logreg.get("macro_f1") is not None and report.get("macro_f1", 0) <= logreg["macro_f1"]:
        out.append(
            "It does not beat logistic regression on raw pixels: it has learned little "
            "beyond pixel templates. Do not promote it."
        )
    out.append(
        f"Measured on {report.get('n', 0)} images of the {report.get('split', 'test')} split of "
        f"dataset {report.get('dataset', '?')}: images from other cameras, lighting or "
        "framing may score lower; watch the drift monitor after deployment."
    )
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _markdown(card: Mapping[str, Any]) -> str:
    report = card["evaluation"]
    data = card["dataset"]
    lines = [
        f"# Model card: {card['model']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Data",
        "",
        f"Dataset **{data['name']}**, manifest sha256 `{data['manifest_sha256']}`.",
        "",
    ]
    splits = sorted({s for per in data["counts"].values() for s in per}, key=str)
    lines += _table(
        ["class", *[s or "(no split)" for s in splits]],
        [
            [label or "(unlabelled)", *[str(per.get(s, 0)) for s in splits]]
            for label, per in data["counts"].items()
        ],
    )
    lines += ["", "Label sources: " + _sources(data["label_sources"]), ""]
    lines += ["## Training", "", "```json", json.dumps(card["training"], indent=2), "```", ""]
    if card["timings"]:
        lines += [
            "Stage timings: "
            + ", ".join(f"{k} {_num(v, 1)} s" for k, v in card["timings"].items()),
            "",
        ]
    lines += [
        "## Metrics",
        "",
        f"On {report.get('n', 0)} images of split `{report.get('split', '')}`: macro-F1 "
        f"**{_num(report.get('macro_f1'))}**, accuracy {_num(report.get('accuracy'))}.",
        "",
    ]
    lines += _table(
        ["class", "precision", "recall", "F1", "support"],
        [
            [label, _num(m["precision"]), _num(m["recall"]), _num(m["f1"]), str(m["support"])]
            for label, m in report.get("per_class", {}).items()
        ],
    )
    lines += ["", "## Baselines (same images, same run)", ""]
    rows = [["this model", _num(report.get("macro_f1")), _num(report.get("accuracy"))]]
    for key, title in (("majority", "majority class"), ("logreg_pixels", "logreg on pixels")):
        entry = (report.get("baselines") or {}).get(key) or {}
        rows.append([title, _num(entry.get("macro_f1")), _num(entry.get("accuracy"))])
    champion = (report.get("baselines") or {}).get("champion")
    if champion:
        rows.append(
            [f"champion {champion['ref']}", _num(champion["macro_f1"]), _num(champion["accuracy"])]
        )
    lines += _table(["model", "macro-F1", "accuracy"], rows)
    logreg = (report.get("baselines") or {}).get("logreg_pixels") or {}
    if logreg.get("train_images"):
        lines += [
            "",
            f"Logistic regression was fitted on {logreg['train_images']} of "
            f"{logreg.get('train_images_available', logreg['train_images'])} train images.",
        ]
    latency = report.get("latency_ms_per_image") or {}
    lines += [
        "",
        "## Calibration and speed",
        "",
        f"Expected calibration error (ECE): {_num(report.get('ece'))} (0 = its scores are "
        "exactly as often right as they claim); see `evaluation/reliability.png`.",
        "",
        f"Latency per image on {report.get('threads', 2)} CPU threads: "
        f"{_num(latency.get('batch1_median'), 1)} ms alone, "
        f"{_num(latency.get('batch32_per_image'), 1)} ms in batches of 32.",
        "",
        "Figures: `evaluation/confusion.png`, `evaluation/reliability.png`, and "
        "`evaluation/explain.html` (what it looks at, for people who do not read metrics).",
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## How to reproduce",
        "",
        f"Code version `{card['code_version']}`.",
        "",
        "```",
        *card["reproduce"],
        "```",
        "",
    ]
    return "\n".join(lines)


def _sources(sources: Mapping[str, Any]) -> str:
    if not sources:
        return "none recorded"
    return ", ".join(f"{k or 'unlabelled'}: {v}" for k, v in sources.items())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_card(
    out_dir: Path,
    *,
    model: str,
    dataset_name: str,
    dataset_manifest_sha256: str,
    counts: dict[str, Any],
    label_sources: dict[str, Any],
    training_config: dict[str, Any],
    report: dict[str, Any],
    timings: dict[str, Any],
    code_version: str,
) -> None:
    """Write card.json and card.md into ``out_dir`` (the version's staging folder).

    ``counts`` is Dataset.counts() (label -> split -> n), ``label_sources`` the number
    of records per label source, ``report`` training.evaluate's report.
    """
    classes = ", ".join(c for c in report.get("labels", []) if c)
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "model": model,
        "intended_use": (
            f"Classifies one camera frame (or photo) into one of: {classes}. Served by "
            "camstream's worker through Triton on frames from configured cameras; its score "
            "is the top class's softmax probability. Not for decisions about people, and "
            "not for images unlike its training data without re-evaluation."
        ),
        "dataset": {
            "name": dataset_name,
            "manifest_sha256": dataset_manifest_sha256,
            "counts": counts,
            "label_sources": label_sources,
        },
        "training": training_config,
        "evaluation": {
            key: report.get(key)
            for key in (
                "model",
                "dataset",
                "split",
                "n",
                "labels",
                "per_class",
                "macro_f1",
                "accuracy",
                "ece",
                "latency_ms_per_image",
                "baselines",
                "threads",
            )
        },
        "limitations": limitations(counts, label_sources, report),
        "timings": timings,
        "code_version": code_version,
        "reproduce": [
            f"camstream train --dataset {dataset_name} --model {model.split(':', maxsplit=1)[0]}",
            "# or, in the model env, with this version's training_config.json:",
            "python -m training.train --config training_config.json",
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / CARD_JSON, json.dumps(card, indent=2, default=str) + "\n")
    _write_atomic(out_dir / CARD_MD, _markdown(card))
