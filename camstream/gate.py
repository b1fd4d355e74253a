"""The promotion gate: may a candidate version replace the champion?

A candidate passes only if every check holds, each failure being one reason a person
can read, with its figures:

- it beats the champion on the gate metric (macro-F1 by default) by ``margin``;
- on the test images both were evaluated on (paired by sha256), McNemar's exact test
  says it is right more often than the champion and the difference is not chance
  (p < ``alpha``): a better macro-F1 on a few hundred images can be noise;
- it beats each baseline measured in its own evaluation (majority class, logistic
  regression on raw pixels) by ``margin``: a model no better than those is not learning
  from the images.

Without a champion only the baselines are checked. ``Decision.metrics`` holds the
figures, for the registry's history.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from camstream.errors import ConfigError

BASELINES = ("majority", "logreg_pixels")
# Metrics the gate can recompute from predictions, for two reports on different sets.
_FROM_PREDICTIONS = ("macro_f1", "accuracy")
_EPSILON = 1e-12  # float slack: 0.81 beats 0.80 by a margin of 0.01

Prediction = Mapping[str, Any]


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reasons: list[str]
    metrics: dict[str, Any]


def decide(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    cand_preds: Iterable[Prediction],
    champ_preds: Iterable[Prediction] | None,
    margin: float = 0.01,
    alpha: float = 0.05,
    metric: str = "macro_f1",
) -> Decision:
    """Whether ``candidate`` (an evaluation report.json) may replace ``champion`` (the
    champion's report on the same test images, or None), with the reasons when not.
    ``cand_preds`` and ``champ_preds`` are their predictions.jsonl rows."""
    reasons: list[str] = []
    value = _metric(candidate, metric)
    metrics: dict[str, Any] = {
        "metric": metric,
        "margin": margin,
        "alpha": alpha,
        "candidate": value,
        "candidate_ref": candidate.get("model"),
        "baselines": {},
    }
    if value is None:
        reasons.append(f"the candidate's evaluation report has no {metric}: evaluate it again")

    baselines = candidate.get("baselines") or {}
    for name in BASELINES:
        entry = baselines.get(name)
        base = _metric(entry, metric) if isinstance(entry, Mapping) else None
        metrics["baselines"][name] = base
        if base is None:
            reasons.append(
                f"the candidate's evaluation has no {name} baseline {metric}: the gate needs "
                "the baselines measured in the same run; evaluate it again"
            )
        elif value is not None and value - base < margin - _EPSILON:
            reasons.append(
                f"{metric} {value:.4f} does not beat the {name} baseline's {base:.4f} by the "
                f"margin {margin:.4f} (difference {value - base:+.4f})"
            )

    if champion is not None:
        reasons += _against_champion(
            candidate, champion, list(cand_preds), list(champ_preds or ()), metrics
        )
    else:
        metrics["champion"] = None
    return Decision(accepted=not reasons, reasons=reasons, metrics=metrics)


def _against_champion(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any],
    cand_preds: list[Prediction],
    champ_preds: list[Prediction],
    metrics: dict[str, Any],
) -> list[str]:
    """The champion checks: the metric by the margin, and McNemar on paired images."""
    reasons = []
    metric, margin, alpha = metrics["metric"], metrics["margin"], metrics["alpha"]
    metrics["champion_ref"] = champion.get("model")
    pairs = _pairs(cand_preds, champ_preds)
    metrics["paired"] = len(pairs)

    same_set = bool(candidate.get("dataset_manifest_sha256")) and (
        candidate.get("dataset_manifest_sha256"),
        candidate.get("split"),
    ) == (champion.get("dataset_manifest_sha256"), champion.get("split"))
    metrics["same_test_set"] = same_set
    ours, theirs = metrics["candidate"], _metric(champion, metric)
    if not same_set:
        # Reports on different sets are not comparable: recompute on the images both have.
        if metric in _FROM_PREDICTIONS and pairs:
            ours = _score(metric, [(truth, pred) for truth, pred, _ in pairs])
            theirs = _score(metric, [(truth, other) for truth, _, other in pairs])
            metrics["candidate_paired"] = ours
        else:
            reasons.append(
                f"the candidate and the champion were evaluated on different test sets "
                f"(dataset manifest {candidate.get('dataset_manifest_sha256')} vs "
                f"{champion.get('dataset_manifest_sha256')}): evaluate the champion on the "
                "candidate's test set"
            )
            ours = theirs = None
    metrics["champion"] = theirs
    if ours is not None and theirs is not None:
        metrics["improvement"] = ours - theirs
        if ours - theirs < margin - _EPSILON:
            on = "" if same_set else f" on the {len(pairs)} test images both were evaluated on"
            reasons.append(
                f"{metric} {ours:.4f} does not beat the champion's {theirs:.4f} by the "
                f"margin {margin:.4f}{on} (difference {ours - theirs:+.4f})"
            )
    elif theirs is None and same_set:
        reasons.append(f"the champion's evaluation report has no {metric}")

    if not pairs:
        reasons.append(
            "no test image was evaluated for both the candidate and the champion (paired "
            "by sha256): evaluate the champion on the candidate's test set"
        )
        return reasons
    b, c, p = mcnemar(
        [truth == pred for truth, pred, _ in pairs],
        [truth == other for truth, _, other in pairs],
    )
    metrics.update(b=b, c=c, p_value=p)
    counts = (
        f"on the {len(pairs)} paired test images the candidate alone is right on {b} and "
        f"the champion alone on {c}"
    )
    if b + c == 0:
        reasons.append(f"{counts}: no evidence the candidate is better (McNemar)")
    elif b <= c:
        reasons.append(f"{counts}: the candidate is not right more often (McNemar p={p:.3g})")
    elif p >= alpha:
        reasons.append(
            f"{counts}: McNemar's exact test gives p={p:.3g}, not below alpha {alpha}, so "
            "the difference may be chance"
        )
    return reasons


def mcnemar(cand_right: Sequence[bool], champ_right: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test on paired correctness: (b, c, two-sided p), where b counts
    images only the candidate gets right and c those only the champion gets right."""
    b = sum(1 for ours, theirs in zip(cand_right, champ_right, strict=True) if ours and not theirs)
    c = sum(1 for ours, theirs in zip(cand_right, champ_right, strict=True) if theirs and not ours)
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions.jsonl; ConfigError naming the file and line when bad."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing: evaluate the model first")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"sha256": str(row["sha256"]), **row})
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number} is not a prediction row ({exc})") from exc
    return rows


def _pairs(ours: list[Prediction], theirs: list[Prediction]) -> list[tuple[str, str, str]]:
    """(truth, candidate's prediction, champion's prediction) per image both have."""
    by_sha = {str(row["sha256"]): row for row in theirs}
    pairs = []
    for row in ours:
        other = by_sha.get(str(row["sha256"]))
        if other is not None:
            pairs.append((str(row["truth"]), str(row["pred"]), str(other["pred"])))
    return pairs


def _metric(report: Mapping[str, Any], metric: str) -> float | None:
    value = report.get(metric)
    return float(value) if isinstance(value, int | float) else None


def _score(metric: str, rows: list[tuple[str, str]]) -> float:
    """Accuracy or macro-F1 (over the labels in truth or prediction) of (truth, pred)."""
    if metric == "accuracy":
        return sum(truth == pred for truth, pred in rows) / len(rows)
    hits = Counter(truth for truth, pred in rows if truth == pred)
    truths = Counter(truth for truth, _ in rows)
    preds = Counter(pred for _, pred in rows)
    labels = set(truths) | set(preds)
    return sum(2 * hits[label] / (truths[label] + preds[label]) for label in labels) / len(labels)
