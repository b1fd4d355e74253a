"""`camstream evaluate --model MODEL[:VERSION] --dataset NAME`: a registered version's
report on a dataset split, measured in the model environment (training.evaluate), beside
the version in the registry (its content stays immutable), against its baselines and
the model's champion."""

from __future__ import annotations

from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings

app = new_app()

CHAMPION = "champion"


@app.command()
def evaluate(
    model: Annotated[
        str,
        typer.Option(help="MODEL, MODEL:NUMBER, MODEL:ALIAS or MODEL:DIGEST (bare: champion)."),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name (camstream datasets list).")],
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
) -> None:
    """Evaluate a registered version: per-class metrics, confusion matrix, calibration,
    latency, the majority, logistic-regression-on-pixels and champion baselines, and an
    explanation page, written into the registry's reports folder."""
    from camstream.datasets import Dataset, Split, dataset_dir
    from camstream.registry import Registry
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    if split not in {str(s) for s in Split if s and s != Split.EXCLUDED}:
        raise typer.BadParameter(f"{split!r}: use train, val or test", param_hint="--split")
    config = settings()
    registry = Registry(config.registry_path)
    version = registry.resolve(model)  # verified: a corrupt version is refused by name
    root = dataset_dir(config.datasets_path, dataset)
    Dataset.load(root)  # a missing or broken dataset is named before the model env starts
    folder = registry.report_dir(version, dataset, split)
    args = [
        "training.evaluate",
        "--onnx",
        str(version.path / "model.onnx"),
        "--labels",
        str(version.path / "labels.txt"),
        "--dataset-dir",
        str(root),
        "--split",
        split,
        "--out",
        str(folder),
        "--ref",
        version.ref,
    ]
    champion_number = registry.aliases(version.model).get(CHAMPION)
    if champion_number is not None and champion_number != version.number:
        champion = registry.resolve(f"{version.model}:{champion_number}")
        args += [
            "--champion-onnx",
            str(champion.path / "model.onnx"),
            "--champion-labels",
            str(champion.path / "labels.txt"),
            "--champion-ref",
            champion.ref,
        ]
    run_in_model_env(locate_model_env(), args, "evaluate", capture=False)
    out(str(folder / "report.json"))
