"""What one training run is asked to do: ``TrainConfig``, written as JSON by the CLI
(`camstream train`, application env) and read by ``python -m training.train`` (model
env). Both environments import it: pydantic only, no camstream settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Head = Literal["linear", "mlp"]
Imbalance = Literal["none", "class_weights", "focal"]
Augmentation = Literal["hflip"]


class TrainConfig(BaseModel):
    """A training run: data, model name, head, regularisation, imbalance handling,
    augmentation, early stopping and the optional fine-tuning of the conv head. The same
    config (seed included) trains the same weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_dir: Path = Field(description="The dataset folder (dataset.json, manifest.jsonl).")
    model: str = Field(description="Registry model name the new version belongs to.")
    registry_dir: Path
    cache_dir: Path = Field(description="Embeddings go under <cache_dir>/embeddings/.")
    seed: int = 0
    head: Head = "mlp"
    hidden: int = Field(default=256, ge=1, description="MLP head width.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0)
    batch_size: int = Field(default=256, ge=1)
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=8, ge=1, description="Epochs without a better val macro-F1.")
    imbalance: Imbalance = "class_weights"
    focal_gamma: float = Field(default=2.0, ge=0.0)
    augment: list[Augmentation] = Field(default_factory=lambda: list[Augmentation](["hflip"]))
    fine_tune: bool = Field(default=False, description="Also train the 1x1 conv head.")
    fine_tune_epochs: int = Field(default=3, ge=1)
    fine_tune_lr: float = Field(default=1e-4, gt=0.0)
    include_pseudo: bool = Field(default=False, description="Train on pseudo labels too.")
    threads: int = Field(default=2, ge=1)
    profile_frames: int = Field(default=200, ge=1, description="Images in the drift profile.")
    explain_per_class: int = Field(
        default=2, ge=0, description="Right and wrong examples per class on the explanation page."
    )
    champion_onnx: Path | None = None
    champion_labels: Path | None = None
    champion_ref: str | None = None

    @model_validator(mode="after")
    def _champion_complete(self) -> TrainConfig:
        given = [self.champion_onnx, self.champion_labels, self.champion_ref]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise ValueError("champion_onnx, champion_labels and champion_ref go together")
        return self
