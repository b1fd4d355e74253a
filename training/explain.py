"""The explanation page: what the model gets right and wrong, and what it looked at.

For people who do not read metrics. Per class, a few images the model got right (its
surest) and a few it got wrong (its surest mistakes), each shown beside an occlusion
heatmap: a grey square slides over the 224x224 model input on a ``GRID`` x ``GRID``
grid, and the drop in the predicted class's probability where it covers the image is
painted red. Red is where the model looked: hide it and the model is less sure of its
answer. Occlusion needs no gradients, so it works on any exported ONNX model; one
example costs GRID*GRID extra images, run as one batch.

Writes ``explain.html`` (self-contained, inline CSS) and ``explain/*.png`` (relative
links) into the evaluation folder. Model env (onnxruntime through the Classifier).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from training.predict import Classifier, Image, load_model_input

PAGE_FILE = "explain.html"
IMAGES_DIR = "explain"
GRID = 7  # 7x7 squares of 32 px over the 224 input
FILL = 127  # the grey the squares are painted with: the model's zero after (x - 127) / 128
# Below this largest drop in log-odds (nats) no area mattered; the page says so instead of
# stretching noise to full red.
MIN_DROP = 0.1

Heat = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Example:
    index: int  # into the evaluated records
    truth: str
    pred: str
    score: float

    @property
    def right(self) -> bool:
        return self.truth == self.pred


def choose_examples(
    truth: Sequence[str],
    pred: Sequence[str],
    score: Sequence[float],
    classes: Sequence[str],
    per_class: int,
) -> dict[str, tuple[list[Example], list[Example]]]:
    """Per true class: its ``per_class`` surest right answers and surest mistakes."""
    out: dict[str, tuple[list[Example], list[Example]]] = {}
    for label in classes:
        members = [
            Example(i, t, p, float(s))
            for i, (t, p, s) in enumerate(zip(truth, pred, score, strict=True))
            if t == label
        ]
        members.sort(key=lambda e: (-e.score, e.index))
        right = [e for e in members if e.right][:per_class]
        wrong = [e for e in members if not e.right][:per_class]
        out[label] = (right, wrong)
    return out


def occlusion_batch(image: Image, grid: int = GRID, fill: int = FILL) -> Image:
    """``grid*grid`` copies of a model input, each with one window painted grey: windows
    twice a cell wide, centred on each cell of the grid, so they overlap and a part of
    the object the size of a sleeve or a sole can be hidden whole."""
    side = image.shape[0]
    cell = side / grid
    batch = np.repeat(image[None], grid * grid, axis=0)
    for r in range(grid):
        for c in range(grid):
            top, left = round((r - 0.5) * cell), round((c - 0.5) * cell)
            bottom, right = round((r + 1.5) * cell), round((c + 1.5) * cell)
            batch[r * grid + c, max(top, 0) : bottom, max(left, 0) : right] = fill
    return batch


def occlusion_map(
    classifier: Classifier, image: Image, class_index: int, grid: int = GRID
) -> tuple[Heat, float]:
    """How much hiding each window lowers the model's log-odds for ``class_index``
    ([grid, grid], negative where hiding it made the model surer), and that class's
    probability unoccluded. Log-odds (log p - log of the other classes' sum, both from
    the probabilities themselves), because a confident model's probability does not
    move at all in float32 (1.0 stays 1.0) where its evidence is, while the other
    classes' share moves by orders of magnitude."""
    probs = classifier.predict(np.concatenate([image[None], occlusion_batch(image, grid)]))
    probs = probs.astype(np.float64)
    chosen = probs[:, class_index]
    others = probs.sum(axis=1) - chosen
    log_odds = np.log(np.clip(chosen, 1e-30, None)) - np.log(np.clip(others, 1e-30, None))
    drop = (log_odds[0] - log_odds[1:]).reshape(grid, grid).astype(np.float32)
    return drop, float(chosen[0])


def overlay(image: Image, drop: Heat) -> Image:
    """The model input with the positive drops painted over it, red = largest."""
    peak = float(drop.max())
    if peak < MIN_DROP:
        return image.copy()
    heat = np.clip(drop / peak, 0.0, 1.0)
    big = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big, 0.0, 1.0)
    colour = cv2.applyColorMap((big * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (0.65 * big)[..., None]
    mixed = image.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.clip(mixed, 0, 255).astype(np.uint8)


def panel(image: Image, drop: Heat) -> Image:
    """The picture and its heatmap side by side, as RGB."""
    gap = np.full((image.shape[0], 6, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, overlay(image, drop)], axis=1)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "class"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.row{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;padding:6px;border:3px solid #ccc;border-radius:6px;width:454px}
figure.right{border-color:#3a9d4a} figure.wrong{border-color:#c8402f}
figure img{width:454px;image-rendering:auto}
figcaption{font-size:.95em;margin-top:4px} .muted{color:#666}
"""


def _rounded(factor: float) -> str:
    """A factor for people: two significant digits, thousands separated (1.3, 42,
    850,000)."""
    if factor < 10:
        return f"{factor:.1f}"
    digits = math.floor(math.log10(factor)) - 1
    return f"{round(factor, -digits):,.0f}"


def _figure(example: Example, src: str, path: str, peak: float) -> str:
    verdict = "right" if example.right else "wrong"
    said = f"the model said <b>{html.escape(example.pred)}</b>, {example.score:.0%} sure"
    look = (
        f"hiding the red area lowers its confidence the most (its odds fall about "
        f"{_rounded(math.exp(peak))}-fold)"
        if peak >= MIN_DROP
        else "no single area changed its answer much"
    )
    return (
        f'<figure class="{verdict}"><img src="{html.escape(src)}" alt="{html.escape(path)}">'
        f"<figcaption>{'&#10004;' if example.right else '&#10008;'} "
        f"It is <b>{html.escape(example.truth)}</b>; {said}.<br>"
        f'<span class="muted">{look}. {html.escape(path)}</span></figcaption></figure>'
    )


def write_explanation(
    out_dir: Path,
    classifier: Classifier,
    labels: Sequence[str],
    paths: Sequence[Path],
    truth: Sequence[str],
    pred: Sequence[str],
    score: Sequence[float],
    classes: Sequence[str],
    per_class: int = 2,
    title: str = "",
    progress: Any = None,
) -> str:
    """Write explain.html and its images into ``out_dir``; returns the page's file name.

    ``progress`` is a rich Progress to add a task to, or None.
    """
    chosen = choose_examples(truth, pred, score, classes, per_class)
    folder = out_dir / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a re-run must not leave a previous run's images
        old.unlink()
    total = sum(len(r) + len(w) for r, w in chosen.values())
    task = progress.add_task("explanation heatmaps", total=total) if progress else None
    index_of = {label: i for i, label in enumerate(labels)}
    sections = []
    for n_class, (label, (right, wrong)) in enumerate(chosen.items()):
        members = [i for i, t in enumerate(truth) if t == label]
        hits = sum(1 for i in members if pred[i] == label)
        parts = [
            f"<h2>{html.escape(label)}</h2><p>The model recognises {hits} of the "
            f"{len(members)} {html.escape(label)} images ({hits / len(members):.0%}).</p>"
        ]
        for kind, examples in (("right", right), ("wrong", wrong)):
            if not examples:
                continue
            heading = "Its surest right answers" if kind == "right" else "Its surest mistakes"
            figures = []
            for k, example in enumerate(examples):
                image = load_model_input(paths[example.index])
                drop, _ = occlusion_map(classifier, image, index_of[example.pred])
                name = f"{n_class:02d}-{slug(label)}-{kind}-{k + 1}.png"
                cv2.imwrite(str(folder / name), cv2.cvtColor(panel(image, drop), cv2.COLOR_RGB2BGR))
                rel = paths[example.index].name
                figures.append(_figure(example, f"{IMAGES_DIR}/{name}", rel, float(drop.max())))
                if progress is not None:
                    progress.advance(task)
            parts.append(f"<h3>{heading}</h3><div class='row'>{''.join(figures)}</div>")
        if not right and not wrong:
            parts.append("<p class='muted'>No images of this class in this split.</p>")
        sections.append("".join(parts))
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>What the model looks at: {html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>What the model looks at</h1><p class='muted'>{html.escape(title)}</p>"
        "<p>For each kind of object below: pictures the model got right and pictures it "
        "got wrong. Each picture is shown twice: on the left as the model sees it, on the "
        "right with a heatmap. "
        "Red marks the area the model relied on most for its answer: covering it with a "
        "grey square makes the model less sure. A green frame is a right answer, a red "
        "frame a mistake.</p>" + "".join(sections) + "</body></html>\n"
    )
    target = out_dir / PAGE_FILE
    tmp = target.with_name(f".tmp-{PAGE_FILE}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return PAGE_FILE
