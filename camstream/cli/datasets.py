"""Datasets and labels: `camstream datasets fetch|list|show` and `camstream label import|
import-folder`. The work lives in camstream.datasets, camstream.fashion_mnist and
camstream.labels; pseudo-labelling runs in the model environment (training.pseudo)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from camstream.cli.common import new_app, out, progress_bar, settings
from camstream.errors import ConfigError

if TYPE_CHECKING:
    from camstream.datasets import Dataset
    from camstream.labels import LabelReport

datasets_app = new_app(help="Datasets: fetch, list, show.", no_args_is_help=True)
fetch_app = new_app(help="Build a dataset from a published source.", no_args_is_help=True)
datasets_app.add_typer(fetch_app, name="fetch")
label_app = new_app(
    help="Labels: from a CSV file, class folders, or a model.", no_args_is_help=True
)

DatasetName = Annotated[str, typer.Option("--dataset", help="The dataset to label.")]
SPLIT_COLUMNS = ("train", "val", "test", "excluded", "")


def _open(name: str, create_as: str = "") -> Dataset:
    """Dataset ``name``; with ``create_as`` (its source), a new empty one when there is
    none yet (written only when the command saves it)."""
    import time

    from camstream.datasets import INFO_FILE, Dataset, DatasetInfo, dataset_dir

    root = dataset_dir(settings().datasets_path, name)
    if create_as and not (root / INFO_FILE).exists():
        return Dataset.create(root, DatasetInfo(name, create_as, int(time.time() * 1000)))
    return Dataset.load(root)


@contextmanager
def _progress(title: str) -> Iterator[Any]:
    """A callback (stage, done, total) that draws a bar on a terminal, else nothing."""
    from rich.progress import TimeRemainingColumn

    with progress_bar(TimeRemainingColumn()) as bar:
        if bar is None:
            yield None
            return
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{title}: {stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def parse_rare(values: list[str]) -> dict[str, float]:
    """``LABEL=FRACTION`` flags -> {label: fraction}."""
    rare: dict[str, float] = {}
    for value in values:
        label, sep, fraction = value.partition("=")
        try:
            rare[label.strip()] = float(fraction)
        except ValueError:
            sep = ""
        if not sep or not label.strip():
            raise ConfigError(f"--rare {value!r}: write LABEL=FRACTION, e.g. --rare shirt=0.1")
    return rare


@fetch_app.command("fashion-mnist")
def fetch_fashion_mnist(
    name: Annotated[str, typer.Option(help="Dataset name.")] = "fashion-mnist",
    train_per_class: Annotated[
        int | None, typer.Option(help="Keep N images per class of the official train set.")
    ] = None,
    test_per_class: Annotated[
        int | None, typer.Option(help="Keep N images per class of the official test set.")
    ] = None,
    rare: Annotated[
        list[str] | None,
        typer.Option(help="LABEL=FRACTION: keep that share of a class's train+val images."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subsets and the val split.")] = 0,
) -> None:
    """Zalando's Fashion-MNIST (70,000 28x28 product photos, 10 classes) from Debian's
    dataset-fashion-mnist package: the official test set is test, the train set is
    train/val, near-duplicates of test images excluded. Idempotent."""
    from camstream.fashion_mnist import fetch

    config = settings()
    with _progress("fashion-mnist") as progress:
        dataset = fetch(
            config.datasets_path,
            config.cache_dir,
            name,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            rare=parse_rare(rare or []),
            seed=seed,
            progress=progress,
        )
    out(_table(dataset))


@datasets_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The datasets, with their image and class counts."""
    from camstream.datasets import Dataset, list_datasets

    root = settings().datasets_path
    rows = []
    for name in list_datasets(root):
        dataset = Dataset.load(root / name)
        rows.append(
            {
                "name": name,
                "source": dataset.info.source,
                "images": len(dataset.records),
                "classes": len(dataset.classes()),
            }
        )
    if as_json:
        out(json.dumps({"datasets_dir": str(root), "datasets": rows}))
    elif not rows:
        out(f"no datasets in {root}; try `camstream datasets fetch fashion-mnist`")
    else:
        out(f"{'NAME':24} {'SOURCE':16} {'IMAGES':>8} {'CLASSES':>8}")
        for row in rows:
            out(f"{row['name']:24} {row['source']:16} {row['images']:>8} {row['classes']:>8}")


def summary(dataset: Dataset) -> dict[str, Any]:
    """What `datasets show --json` prints."""
    return {
        "name": dataset.name,
        "root": str(dataset.root),
        "source": dataset.info.source,
        "description": dataset.info.description,
        "created_ms": dataset.info.created_ms,
        "seed": dataset.info.seed,
        "options": dataset.info.options,
        "images": len(dataset.records),
        "classes": dataset.classes(),
        "counts": dataset.counts(),
        "label_sources": dataset.source_counts(),
        "manifest_sha256": dataset.manifest_sha256(),
    }


def _table(dataset: Dataset) -> str:
    info = summary(dataset)
    counts: dict[str, dict[str, int]] = info["counts"]
    lines = [
        f"dataset {info['name']} ({info['source']}): {info['images']} images, "
        f"{len(info['classes'])} classes, at {info['root']}",
        f"  {'LABEL':24}" + "".join(f"{s or 'unsplit':>10}" for s in SPLIT_COLUMNS),
    ]
    for label, splits in counts.items():
        cells = "".join(f"{splits.get(s, 0):>10}" for s in SPLIT_COLUMNS)
        lines.append(f"  {label or '(unlabelled)':24}{cells}")
    sources = ", ".join(f"{k or 'unlabelled'} {v}" for k, v in info["label_sources"].items())
    lines += [f"label sources: {sources}", f"manifest sha256: {info['manifest_sha256']}"]
    return "\n".join(lines)


@datasets_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Counts per class and split, label sources, and the manifest's sha256."""
    dataset = _open(name)
    out(json.dumps(summary(dataset)) if as_json else _table(dataset))


def _report(report: LabelReport) -> str:
    return (
        f"dataset {report.dataset}: {report.rows} rows read, {report.labelled} labelled "
        f"({report.added} new images, {report.replaced_pseudo} pseudo labels replaced), "
        f"{report.unchanged} unchanged"
        + (f", {report.skipped} non-images skipped" if report.skipped else "")
    )


@label_app.command("import")
def import_labels(
    dataset: DatasetName,
    file: Annotated[
        Path | None, typer.Argument(help="CSV: `path,label` or `camera,seq,label`.")
    ] = None,
    from_model: Annotated[
        str | None,
        typer.Option(help="MODEL[:VERSION]: pseudo-label unlabelled images with this model."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Pseudo labels only at or above this score.")
    ] = None,
) -> None:
    """Human labels from a CSV file, or pseudo labels (marked as such) from a model."""
    if (file is None) == (from_model is None):
        raise ConfigError("give either a CSV FILE or --from-model MODEL[:VERSION], not both")
    if file is not None:
        from camstream.labels import import_csv

        out(_report(import_csv(_open(dataset), file)))
        return
    assert from_model is not None
    if min_score is None or not 0 <= min_score <= 1:
        raise ConfigError("--from-model needs --min-score S, a score between 0 and 1")
    from camstream.registry import Registry
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    config = settings()
    target = _open(dataset)
    version = Registry(config.registry_path).resolve(from_model)
    run_in_model_env(
        locate_model_env(),
        [
            "training.pseudo",
            "--onnx",
            str(version.path / "model.onnx"),
            "--labels",
            str(version.path / "labels.txt"),
            "--dataset-dir",
            str(target.root),
            "--min-score",
            str(min_score),
            "--ref",
            version.ref,
        ],
        "pseudo-label",
        capture=False,
    )
    out(_table(_open(dataset)))


@label_app.command("import-folder")
def import_folder_command(
    folder: Annotated[Path, typer.Argument(help="One folder per label, holding its images.")],
    dataset: DatasetName,
) -> None:
    """Human labels from class folders: the images are copied into the dataset (created
    when new)."""
    from camstream.labels import import_folder

    out(_report(import_folder(_open(dataset, create_as="import"), folder)))
