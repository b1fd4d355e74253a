"""`camstream train`: a new version of a model from a dataset, trained in the model
environment (training.train) and registered with the alias ``candidate``."""

from __future__ import annotations

import json
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError

from camstream.cli.common import new_app, out, settings
from camstream.errors import ConfigError

app = new_app()


def read_config_file(path: Path) -> dict[str, Any]:
    """TrainConfig fields from a .toml or .json file (a table of them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read training config {path}: {exc.strerror}") from exc
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"training config {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"training config {path} must hold a table of TrainConfig fields")
    return values


def build_config(base: dict[str, Any], flags: dict[str, Any]) -> Any:  # training.config.TrainConfig
    """File values, then the flags given on the command line, validated."""
    from training.config import TrainConfig

    values = {**base, **{k: v for k, v in flags.items() if v is not None}}
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"training config is not valid: {exc}") from exc


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name (camstream datasets list).")],
    model: Annotated[str, typer.Option(help="Registry model the new version belongs to.")],
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TrainConfig fields, .toml or .json.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: same config, same weights.")] = None,
    fine_tune: Annotated[
        bool | None, typer.Option("--fine-tune/--no-fine-tune", help="Also train the conv head.")
    ] = None,
    imbalance: Annotated[
        Literal["none", "class_weights", "focal"] | None,
        typer.Option(help="Class weights, focal loss, or neither."),
    ] = None,
    head: Annotated[
        Literal["linear", "mlp"] | None, typer.Option(help="The new classifier head.")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Head epochs at most.")] = None,
) -> None:
    """Train a new version of MODEL on DATASET (transfer learning from EfficientNet-Lite0),
    evaluate it on the test split, register it and point `candidate` at it."""
    from camstream.datasets import Dataset, dataset_dir
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    config = settings()
    base: dict[str, Any] = {
        "registry_dir": str(config.registry_path),
        "cache_dir": str(config.cache_dir),
    }
    if config_file is not None:
        base.update(read_config_file(config_file))
    flags = {
        "dataset_dir": str(dataset_dir(config.datasets_path, dataset)),
        "model": model,
        "seed": seed,
        "fine_tune": fine_tune,
        "imbalance": imbalance,
        "head": head,
        "max_epochs": max_epochs,
    }
    champion = _champion(config.registry_path, model)
    if champion is not None and "champion_ref" not in base:
        flags.update(
            champion_onnx=str(champion.path / "model.onnx"),
            champion_labels=str(champion.path / "labels.txt"),
            champion_ref=champion.ref,
        )
    train_config = build_config(base, flags)
    # Every image is checked against its manifest hash here, in seconds, so a corrupt or
    # missing file is named before the model environment starts.
    Dataset.load(train_config.dataset_dir).verify(check_hashes=True)
    env = locate_model_env()
    with tempfile.TemporaryDirectory(prefix="camstream-train-") as tmp:
        config_path = Path(tmp) / "train_config.json"
        summary_path = Path(tmp) / "summary.json"
        config_path.write_text(train_config.model_dump_json(indent=2))
        run_in_model_env(
            env,
            ["training.train", "--config", str(config_path), "--summary", str(summary_path)],
            "train",
            capture=False,
        )
        summary = json.loads(summary_path.read_text())
    out(summary["ref"])


def _champion(registry_dir: Path, model: str) -> Any:  # camstream.registry.Version | None
    """The model's current champion (verified), measured beside the new version; None
    when the model has none yet."""
    from camstream.registry import Registry

    registry = Registry(registry_dir)
    number = registry.aliases(model).get("champion") if model in registry.models() else None
    return None if number is None else registry.resolve(f"{model}:{number}")
