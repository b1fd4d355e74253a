"""Human labels into a dataset: `camstream label import FILE.csv` and `label import-folder`.

A label file is a CSV with a header, either ``path,label`` (the path relative to the
dataset folder, or absolute to an image inside it) or ``camera,seq,label`` (frames that
``camstream collect`` took). A folder import takes one folder per class and copies its
images into ``images/import/<label>/``.

Everything is checked before anything is written, so bad input changes nothing: a label
file naming images the dataset lacks, unknown columns, a corrupt image, a class too
small to split (camstream.datasets.assign_splits). Human labels replace pseudo labels;
the records labelled get their split afterwards (near-duplicates kept together).
Pseudo-labelling is ``python -m training.pseudo`` (model env), through the same
camstream.datasets.relabel rule, so it never overwrites a human label.
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from camstream.datasets import (
    IMAGES_DIR,
    Dataset,
    DatasetError,
    LabelSource,
    Record,
    assign_splits,
    check_record_path,
    relabel,
)
from camstream.imaging import Image, perceptual_hash

PATH_COLUMNS = ("path", "label")
CAMERA_COLUMNS = ("camera", "seq", "label")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
IMPORT_DIR = f"{IMAGES_DIR}/import"
_SHOWN = 5  # problems listed in a message before "..."
_MAX_LABEL = 100


@dataclass(frozen=True)
class LabelReport:
    """What one import did."""

    dataset: str
    rows: int  # labelled rows or images read
    labelled: int  # records whose label changed (new images included)
    unchanged: int  # records that already had that human label
    replaced_pseudo: int  # pseudo labels a human label replaced
    added: int  # images new to the dataset
    skipped: int = 0  # files a folder import ignored (not images)


def check_label(label: str, where: str) -> str:
    """A label is one printable line of at most 100 characters, with no outer spaces."""
    if not label or label != label.strip() or len(label) > _MAX_LABEL:
        raise DatasetError(
            f"{where}: label {label!r} must be 1-{_MAX_LABEL} characters without leading or "
            "trailing spaces"
        )
    if not label.isprintable() or "/" in label or "\\" in label:
        raise DatasetError(f"{where}: label {label!r} may not hold '/', '\\' or control characters")
    return label


def decode_image(data: bytes) -> Image | None:
    """The image as BGR uint8, or None when OpenCV cannot decode the bytes."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    return np.asarray(image, dtype=np.uint8)


def _listing(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


# CSV ----------------------------------------------------------------------------------


def import_csv(dataset: Dataset, csv_path: Path) -> LabelReport:
    """Apply a label file to ``dataset`` as human labels, assign splits, and save."""
    where = f"label file {csv_path}"
    if not csv_path.is_file():
        raise DatasetError(f"{where} does not exist")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = tuple(c.strip() for c in reader.fieldnames or ())
            if set(columns) not in (set(PATH_COLUMNS), set(CAMERA_COLUMNS)):
                unknown = sorted(set(columns) - set(PATH_COLUMNS) - set(CAMERA_COLUMNS))
                detail = f"unknown columns {unknown}" if unknown else f"columns {list(columns)}"
                raise DatasetError(
                    f"{where}: {detail}; the header must be `path,label` or `camera,seq,label`"
                )
            rows = [
                (reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{where}: not a UTF-8 CSV file ({exc})") from exc
    if not rows:
        raise DatasetError(f"{where} has a header but no rows")

    by_path = {r.path: i for i, r in enumerate(dataset.records)}
    by_frame: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(dataset.records):
        if r.camera and r.seq is not None:
            by_frame.setdefault((r.camera, r.seq), []).append(i)

    records = list(dataset.records)
    wanted: dict[int, tuple[str, int]] = {}  # record index -> (label, line)
    missing: list[str] = []
    conflicts: list[str] = []
    for line, row in rows:
        label = check_label(row["label"], f"{where}:{line}")
        if "path" in row:
            rel = _dataset_path(dataset, row["path"], f"{where}:{line}")
            index = by_path.get(rel)
            if index is None and (dataset.root / rel).is_file():
                records.append(_new_record(dataset.root / rel, rel, f"import:{csv_path.name}"))
                index = by_path[rel] = len(records) - 1
            targets = [] if index is None else [index]
            name = rel
        else:
            seq = _seq(row["seq"], f"{where}:{line}")
            targets = by_frame.get((row["camera"], seq), [])
            name = f"camera {row['camera']!r} seq {seq}"
        if not targets:
            missing.append(f"line {line} {name}")
        for index in targets:
            previous = wanted.setdefault(index, (label, line))
            if previous[0] != label:
                conflicts.append(
                    f"{records[index].path}: {previous[0]!r} (line {previous[1]}) and "
                    f"{label!r} (line {line})"
                )
    if missing:
        raise DatasetError(
            f"{where}: {len(missing)} of {len(rows)} rows name images that are not in dataset "
            f"{dataset.name!r} ({_listing(missing)}); paths are relative to {dataset.root} "
            "(or absolute inside it), camera and seq those of collected frames. Nothing "
            "was changed"
        )
    if conflicts:
        raise DatasetError(
            f"{where}: {len(conflicts)} images get two different labels ({_listing(conflicts)}); "
            "keep one row per image. Nothing was changed"
        )
    report = _apply(dataset, records, wanted, len(rows), len(records) - len(dataset.records))
    dataset.save()
    return report


def _dataset_path(dataset: Dataset, given: str, where: str) -> str:
    """The record path for a CSV path: relative to the dataset, or absolute inside it."""
    if not given:
        raise DatasetError(f"{where}: empty path")
    path = Path(given)
    if path.is_absolute():
        root = dataset.root.resolve()
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            raise DatasetError(
                f"{where}: {given} is outside dataset {dataset.name!r} ({root}); import its "
                "folder with `camstream label import-folder`, or copy it into the dataset"
            ) from None
    try:
        return check_record_path(str(PurePosixPath(given.replace(os.sep, "/"))))
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _seq(value: str, where: str) -> int:
    try:
        seq = int(value)
    except ValueError:
        raise DatasetError(f"{where}: seq {value!r} is not a whole number") from None
    if seq < 0:
        raise DatasetError(f"{where}: seq {seq} is negative")
    return seq


# Folder per class ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Incoming:
    source: Path
    data: bytes
    label: str
    sha256: str
    phash: str


def import_folder(dataset: Dataset, folder: Path) -> LabelReport:
    """Import ``folder/<label>/<image>`` as human-labelled images: each is copied into
    ``images/import/<label>/`` (an image the dataset already holds, by sha256, is only
    relabelled), splits are assigned, and the dataset saved."""
    if not folder.is_dir():
        raise DatasetError(f"import folder {folder} does not exist or is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if loose:
        raise DatasetError(
            f"import folder {folder}: {len(loose)} images outside a class folder "
            f"({_listing(loose)}); put each image in a folder named after its label"
        )
    if not classes:
        raise DatasetError(
            f"import folder {folder} has no class folders; make one folder per label "
            "(e.g. shirt/, bag/) holding its images"
        )

    incoming: list[_Incoming] = []
    corrupt: list[str] = []
    skipped = 0
    for class_dir in classes:
        label = check_label(class_dir.name, f"class folder {class_dir}")
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            data = file.read_bytes()
            image = decode_image(data)
            if image is None:
                corrupt.append(str(file))
                continue
            sha = hashlib.sha256(data).hexdigest()
            incoming.append(_Incoming(file, data, label, sha, perceptual_hash(image)))
    if corrupt:
        raise DatasetError(
            f"import folder {folder}: {len(corrupt)} images cannot be decoded "
            f"({_listing(corrupt)}); replace or remove them. Nothing was changed"
        )
    if not incoming:
        raise DatasetError(f"import folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")

    records = list(dataset.records)
    by_sha: dict[str, int] = {}
    for i, r in enumerate(records):
        by_sha.setdefault(r.sha256, i)
    taken = {r.path for r in records}
    wanted: dict[int, tuple[str, int]] = {}
    copies: list[tuple[bytes, Path]] = []
    conflicts: list[str] = []
    origin = f"import:{folder.name}"
    for n, item in enumerate(incoming, start=1):
        index = by_sha.get(item.sha256)
        if index is None:
            rel = f"{IMPORT_DIR}/{item.label}/{item.source.name}"
            if rel in taken:
                rel = f"{IMPORT_DIR}/{item.label}/{item.source.stem}-{item.sha256[:8]}"
                rel += item.source.suffix
            taken.add(rel)
            records.append(Record(path=rel, sha256=item.sha256, phash=item.phash, origin=origin))
            index = by_sha[item.sha256] = len(records) - 1
            copies.append((item.data, dataset.root / rel))
        previous = wanted.setdefault(index, (item.label, n))
        if previous[0] != item.label:
            conflicts.append(f"{item.source} (also under {previous[0]!r})")
    if conflicts:
        raise DatasetError(
            f"import folder {folder}: the same image is under two labels "
            f"({_listing(conflicts)}); keep it in one class folder. Nothing was changed"
        )
    report = _apply(dataset, records, wanted, len(incoming), len(copies), skipped)
    for data, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
        partial.write_bytes(data)
        partial.replace(target)
    dataset.save()
    return report


# Both ---------------------------------------------------------------------------------


def _apply(
    dataset: Dataset,
    records: list[Record],
    wanted: dict[int, tuple[str, int]],
    rows: int,
    added: int,
    skipped: int = 0,
) -> LabelReport:
    """Relabel, split (may raise: nothing is kept), then put the records in ``dataset``."""
    labelled = unchanged = replaced_pseudo = 0
    for index, (label, _line) in wanted.items():
        before = records[index]
        after = relabel(before, label, LabelSource.HUMAN)
        if before.label == label and before.label_source == LabelSource.HUMAN:
            unchanged += 1
            continue
        labelled += 1
        if before.label and before.label_source == LabelSource.PSEUDO:
            replaced_pseudo += 1
        records[index] = after
    dataset_records = assign_splits(records, dataset.info.seed)
    dataset.records = dataset_records
    return LabelReport(
        dataset=dataset.name,
        rows=rows,
        labelled=labelled,
        unchanged=unchanged,
        replaced_pseudo=replaced_pseudo,
        added=added,
        skipped=skipped,
    )


def _new_record(path: Path, rel: str, origin: str) -> Record:
    """A record for an image already inside the dataset folder but not in its manifest."""
    data = path.read_bytes()
    image = decode_image(data)
    if image is None:
        raise DatasetError(f"image {path} cannot be decoded; replace or remove it")
    return Record(
        path=rel,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=perceptual_hash(image),
        origin=origin,
    )
