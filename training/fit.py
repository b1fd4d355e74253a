"""Fitting a new head (and, optionally, the conv head) on cached trunk outputs, in torch.

Two steps share one loop (``fit``): the head on pooled features (linear, or an MLP with
dropout), then optionally the 1x1 conv head + its batch norm + that head on the last
block's cached activations (LP-FT: the head is trained first so fine-tuning starts from
a good classifier). Each epoch shuffles with a seeded generator and, with hflip
augmentation, picks the original or the mirrored view of each sample; validation
macro-F1 decides early stopping (patience) and the best epoch's weights are restored.
The loss handles imbalance by inverse-frequency class weights, focal loss, or neither.
Same inputs and seed -> the same weights (deterministic CPU kernels, fixed threads).

Model env only (torch, scikit-learn, matplotlib); imported lazily by training.train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.config import TrainConfig

Array = npt.NDArray[Any]
Labels = npt.NDArray[np.int64]


@dataclass
class Curve:
    """One value per epoch, for the learning-curves figure and the summary."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_macro_f1: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, list[float]]:
        return {
            "train_loss": [round(v, 6) for v in self.train_loss],
            "val_loss": [round(v, 6) for v in self.val_loss],
            "val_macro_f1": [round(v, 6) for v in self.val_macro_f1],
            "seconds": [round(v, 3) for v in self.seconds],
        }


@dataclass(frozen=True)
class FitResult:
    module: Any  # the torch module with the best epoch's weights
    best_epoch: int  # 0 = the weights it started from (fine-tuning that did not help)
    best_val_macro_f1: float
    curve: Curve


def macro_f1(truth: Labels, pred: Labels, classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(truth, pred, labels=list(range(classes)), average="macro", zero_division=0)
    )


def class_weights(labels: Labels, classes: int) -> Array:
    """Inverse frequency, normalised so that a balanced set gets 1.0 everywhere."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    return (len(labels) / (classes * np.maximum(counts, 1.0))).astype(np.float32)


def make_loss(config: TrainConfig, labels: Labels, classes: int) -> Callable[[Any, Any], Any]:
    """Mean loss over a batch of logits and integer targets."""
    import torch
    import torch.nn.functional as F

    if config.imbalance == "class_weights":
        weight = torch.from_numpy(class_weights(labels, classes))
        return lambda logits, target: F.cross_entropy(logits, target, weight=weight)
    if config.imbalance == "focal":
        gamma = config.focal_gamma

        def focal(logits: Any, target: Any) -> Any:
            log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
            return (-((1.0 - log_p.exp()) ** gamma) * log_p).mean()

        return focal
    return F.cross_entropy  # type: ignore[no-any-return]


def build_head(config: TrainConfig, classes: int, inputs: int) -> Any:
    """The new classifier on pooled features: dropout + linear, or an MLP."""
    from torch import nn

    if config.head == "linear":
        return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(inputs, classes))
    return nn.Sequential(
        nn.Linear(inputs, config.hidden),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden, classes),
    )


def conv_head_module(backbone: Any, head: Any) -> Any:
    """The pretrained 1x1 conv head and batch norm (kept in eval mode: running statistics
    stay as pretrained, so the exported graph is exactly what was trained), then ReLU6,
    global average pooling and ``head``: last block's activations -> logits."""
    import torch
    from torch import nn

    class ConvHead(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = copy.deepcopy(backbone._conv_head)
            self.bn = copy.deepcopy(backbone._bn1)
            self.head = head

        def train(self, mode: bool = True) -> ConvHead:
            super().train(mode)
            self.bn.eval()
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.clamp(self.bn(self.conv(x)), 0.0, 6.0)
            return self.head(x.mean(dim=(2, 3)))

    return ConvHead()


def _predict(module: Any, inputs: Array, batch: int) -> Array:
    import torch

    module.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.asarray(inputs[start : start + batch], dtype=np.float32))
            parts.append(module(x))
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def fit(
    module: Any,
    views: Sequence[Array],
    labels: Labels,
    val_inputs: Array,
    val_labels: Labels,
    config: TrainConfig,
    classes: int,
    epochs: int,
    lr: float,
    seed: int,
    patience: int,
    progress: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train ``module`` on ``views`` (one array per view, same rows as ``labels``), early
    stopping on the validation macro-F1; epoch 0 is ``module`` as given."""
    import torch

    loss_fn = make_loss(config, labels, classes)
    params = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    target = torch.from_numpy(labels)
    val_target = torch.from_numpy(val_labels)
    curve = Curve()

    def validate() -> tuple[float, float]:
        logits = _predict(module, val_inputs, 1024)
        loss = float(loss_fn(torch.from_numpy(logits), val_target))
        return loss, macro_f1(val_labels, logits.argmax(1), classes)

    best_f1 = validate()[1]
    best_state = copy.deepcopy(module.state_dict())
    best_epoch, stale = 0, 0
    n = len(labels)
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        module.train()
        order = torch.randperm(n, generator=generator)
        pick = torch.randint(0, len(views), (n,), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            chosen = pick[rows]
            x = torch.empty((len(rows), *views[0].shape[1:]), dtype=torch.float32)
            for v, array in enumerate(views):
                mask = (chosen == v).numpy()
                if mask.any():
                    x[torch.from_numpy(mask)] = torch.from_numpy(
                        np.asarray(array[rows.numpy()[mask]], dtype=np.float32)
                    )
            loss = loss_fn(module(x), target[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(rows)
            seen += len(rows)
        val_loss, val_f1 = validate()
        curve.train_loss.append(total / max(seen, 1))
        curve.val_loss.append(val_loss)
        curve.val_macro_f1.append(val_f1)
        curve.seconds.append(time.monotonic() - started)
        if progress is not None:
            progress(epoch, val_f1)
        if val_f1 > best_f1:
            best_f1, best_epoch, stale = val_f1, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
            if stale >= patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return FitResult(module, best_epoch, best_f1, curve)


def plot_curves(head: Curve, fine: Curve | None, path: Path) -> None:
    """Train/val loss and val macro-F1 per epoch; fine-tuning epochs follow the head's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    parts = [("head", head)] + ([("fine-tune", fine)] if fine is not None else [])
    offset = 0
    for name, curve in parts:
        epochs = list(range(offset + 1, offset + len(curve.train_loss) + 1))
        loss_ax.plot(epochs, curve.train_loss, label=f"train loss ({name})")
        loss_ax.plot(epochs, curve.val_loss, "--", label=f"val loss ({name})")
        f1_ax.plot(epochs, curve.val_macro_f1, label=f"val macro-F1 ({name})")
        if offset:
            for ax in (loss_ax, f1_ax):
                ax.axvline(offset + 0.5, color="grey", linewidth=0.8)
        offset += len(curve.train_loss)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    f1_ax.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1")
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
