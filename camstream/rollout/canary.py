"""The canary: a version's own evaluation images, preprocessed as the worker does, go
through the live server pinned to that version, and each answer must match the offline
evaluation (the same top-1, its probability within a tolerance): this catches
training-serving skew before any camera is switched. Which images (``pick_canary``,
``canary_images``), and the comparison (``compare_canary`` -> ``Canary``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CANARY_IMAGES = 32


@dataclass(frozen=True)
class CanarySource:
    """Where a version's offline evaluation lives: its predictions and dataset folder."""

    predictions: Path
    dataset_root: Path
    tolerance: float = 0.02


@dataclass(frozen=True)
class Canary:
    """How the live answers compared with the offline evaluation."""

    n: int
    tolerance: float
    max_delta: float
    mismatches: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return self.n > 0 and not self.mismatches

    def figures(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "tolerance": self.tolerance,
            "max_delta": round(self.max_delta, 6),
            "mismatches": len(self.mismatches),
            "examples": self.mismatches[:5],
        }

    def summary(self) -> str:
        agree = self.n - len(self.mismatches)
        head = f"{self.n} images, {agree} agree (max |dp| {self.max_delta:.4f})"
        if not self.mismatches:
            return head
        shown = "; ".join(
            f"{m['path']}: offline {m['expected']} {m['score']:.3f}, "
            f"live {m['got']} {m['prob']:.3f}"
            for m in self.mismatches[:3]
        )
        return f"{head}: {shown}"


def pick_canary(
    rows: Sequence[Mapping[str, Any]], limit: int = CANARY_IMAGES
) -> list[Mapping[str, Any]]:
    """Up to ``limit`` rows, taken in turn from each true class (in first-seen order),
    so that every class the evaluation had is checked."""
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(str(row.get("truth", "")), []).append(row)
    picked: list[Mapping[str, Any]] = []
    queues = list(by_class.values())
    while queues and len(picked) < limit:
        for queue in list(queues):
            if len(picked) < limit:
                picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


def compare_canary(
    rows: Sequence[Mapping[str, Any]],
    probs: npt.NDArray[np.float32],
    labels: Sequence[str],
    tolerance: float,
) -> Canary:
    """Each live top-1 must be the row's offline ``pred``, its probability within
    ``tolerance`` of the offline ``score``."""
    mismatches = []
    max_delta = 0.0
    for row, p in zip(rows, probs, strict=True):
        best = int(np.argmax(p))
        got = labels[best] if best < len(labels) else str(best)
        prob = float(p[best])
        delta = abs(prob - float(row["score"]))
        max_delta = max(max_delta, delta)
        if got != row["pred"] or delta > tolerance:
            mismatches.append(
                {
                    "path": row.get("path", ""),
                    "expected": row["pred"],
                    "score": float(row["score"]),
                    "got": got,
                    "prob": prob,
                    "delta": round(delta, 6),
                }
            )
    return Canary(len(rows), tolerance, max_delta, mismatches)


def canary_images(
    predictions: Path, dataset_root: Path, limit: int = CANARY_IMAGES
) -> tuple[list[dict[str, Any]], npt.NDArray[np.uint8]]:
    """The evaluation rows to replay (files present, sha256 unchanged) and their model
    inputs, made as the worker makes them (camstream.imaging)."""
    import cv2

    from camstream import imaging
    from camstream.errors import FrameRejected
    from camstream.gate import read_predictions

    usable: list[dict[str, Any]] = []
    inputs: list[npt.NDArray[np.uint8]] = []
    for row in pick_canary(read_predictions(predictions), limit=10**9):
        if len(usable) >= limit:
            break
        path = dataset_root / str(row.get("path", ""))
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            continue
        try:
            if data[:2] == b"\xff\xd8":
                image = imaging.jpeg_to_model_input(data, *imaging.jpeg_dimensions(data))
            else:
                bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                image = imaging.to_model_input(np.asarray(bgr, dtype=np.uint8))
        except FrameRejected:
            continue
        usable.append(dict(row))
        inputs.append(image)
    if not inputs:
        return usable, np.zeros((0, imaging.MODEL_SIZE, imaging.MODEL_SIZE, 3), np.uint8)
    return usable, np.stack(inputs)
