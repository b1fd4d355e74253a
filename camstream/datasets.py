"""Datasets: a folder of images and the manifest that says what each one is.

``<datasets_path>/<name>/`` holds ``dataset.json`` (a DatasetInfo), ``manifest.jsonl``
(one Record a line, sorted by path) and the images, under ``images/``. The manifest is
the dataset's identity: a model version records ``manifest_sha256()``, so a version can
always say which labels and splits it was trained and tested on.

Imported by both Python environments (the CLI's and training's), so stdlib only.

Labels carry their source. A human label overrides any other; a pseudo label (from a
model) fills only an unlabelled record or replaces an older pseudo label: ``relabel``
is that rule, and every writer of labels goes through it. Splits are stratified by
label with a fixed seed, and near-duplicates (equal perceptual hashes) are one group
that never straddles splits: ``assign_splits``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from camstream.errors import ConfigError

INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"
IMAGES_DIR = "images"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

FeatureValue = str | float | int | bool | None


class DatasetError(ConfigError):
    """A dataset, manifest or label file that cannot be used; the message names the
    dataset, the file and the fix."""


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    NONE = ""
    EXCLUDED = (
        "excluded"  # kept on record, used by no split (e.g. a near-duplicate of a test image)
    )


class LabelSource(StrEnum):
    NONE = ""
    HUMAN = "human"
    DATASET = "dataset"  # came with a published dataset (Fashion-MNIST)
    PSEUDO = "pseudo"  # a model's prediction above a score; never taken for a human label


@dataclass(frozen=True)
class Record:
    """One image of a dataset and everything known about it."""

    path: str  # posix, relative to the dataset folder, e.g. "images/train/00012.png"
    sha256: str  # of the image file bytes
    label: str = ""  # "" = unlabelled
    label_source: LabelSource = LabelSource.NONE
    split: Split = Split.NONE
    phash: str = ""  # 16 hex digits from camstream.imaging.perceptual_hash
    origin: str = ""  # e.g. "fashion-mnist:train:123", "camera", "import:labels.csv"
    camera: str = ""
    seq: int | None = None
    capture_ts_ms: int | None = None
    pseudo_model: str = ""  # "MODEL:VERSION" for pseudo labels
    score: float | None = None
    features: dict[str, FeatureValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest line: path, sha256, label, label_source and split always, the
        other fields only when set (a 70k-image manifest stays small)."""
        obj: dict[str, Any] = {
            "path": self.path,
            "sha256": self.sha256,
            "label": self.label,
            "label_source": str(self.label_source),
            "split": str(self.split),
        }
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value not in ("", None, {}):
                obj[name] = value
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Record:
        """Parse a manifest line; a missing or mistyped field raises DatasetError's
        parent ValueError (Dataset.load adds the file and line)."""
        unknown = set(obj) - _RECORD_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        for key in ("path", "sha256"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ValueError(f"'{key}' must be a non-empty string")
        values = dict(obj)
        values["label_source"] = LabelSource(obj.get("label_source", ""))
        values["split"] = Split(obj.get("split", ""))
        values["features"] = dict(obj.get("features") or {})
        check_record_path(values["path"])
        return cls(**values)


_RECORD_FIELDS = frozenset(f.name for f in fields(Record))
_CORE_FIELDS = ("path", "sha256", "label", "label_source", "split")
_OPTIONAL_FIELDS = tuple(f.name for f in fields(Record) if f.name not in _CORE_FIELDS)


def check_record_path(path: str) -> str:
    """A record path must be relative, posix and stay inside the dataset folder."""
    parts = path.split("/")
    if "\\" in path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"path {path!r} must be a plain posix path inside the dataset")
    return path


def relabel(
    record: Record,
    label: str,
    source: LabelSource,
    pseudo_model: str = "",
    score: float | None = None,
) -> Record:
    """``record`` with a new label, following the precedence rule: a human label replaces
    anything; a pseudo label only fills an unlabelled or pseudo-labelled record (else the
    record comes back unchanged); a dataset label replaces anything but a human one."""
    if source == LabelSource.NONE or not label:
        raise ValueError("relabel needs a label and its source")
    current = record.label_source if record.label else LabelSource.NONE
    if source == LabelSource.PSEUDO and current not in (LabelSource.NONE, LabelSource.PSEUDO):
        return record
    if source == LabelSource.DATASET and current == LabelSource.HUMAN:
        return record
    pseudo = source == LabelSource.PSEUDO
    return replace(
        record,
        label=label,
        label_source=source,
        pseudo_model=pseudo_model if pseudo else "",
        score=score if pseudo else None,
    )


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str  # "fashion-mnist", "collect", "import", ...
    created_ms: int
    seed: int = 0
    description: str = ""
    # How the source built it (fetch options); a second fetch with other options is refused.
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "created_ms": self.created_ms,
            "seed": self.seed,
            "description": self.description,
            "options": self.options,
        }


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(obj: Any) -> str:
    return _ENCODER.encode(obj)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Dataset:
    """A dataset folder in memory: its info and records. Change ``records`` (a list of
    frozen Records), then ``save()``."""

    def __init__(self, root: Path, info: DatasetInfo, records: list[Record]) -> None:
        self.root = root
        self.info = info
        self.records = records

    def __repr__(self) -> str:
        return f"Dataset({self.info.name!r}, {len(self.records)} records, root={self.root})"

    @property
    def name(self) -> str:
        return self.info.name

    @classmethod
    def create(cls, root: Path, info: DatasetInfo) -> Dataset:
        """An empty dataset at ``root``; nothing is written until save()."""
        return cls(root, info, [])

    @classmethod
    def load(cls, root: Path) -> Dataset:
        info_path = root / INFO_FILE
        manifest = root / MANIFEST_FILE
        if not info_path.is_file() or not manifest.is_file():
            raise DatasetError(
                f"dataset {root.name!r}: {root} has no {INFO_FILE} and {MANIFEST_FILE}; "
                "create it with `camstream datasets fetch` or `camstream collect`, or check "
                "CAMSTREAM_DATASETS_DIR"
            )
        try:
            raw = json.loads(info_path.read_text(encoding="utf-8"))
            info = DatasetInfo(**raw)
        except (ValueError, TypeError) as exc:
            raise DatasetError(
                f"dataset {root.name!r}: {info_path} is not a valid {INFO_FILE} ({exc}); "
                "restore it or rebuild the dataset"
            ) from exc
        records: list[Record] = []
        with manifest.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(Record.from_json(json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise DatasetError(
                        f"dataset {info.name!r}: {manifest}:{number}: bad manifest line "
                        f"({exc}); restore the file or rebuild the dataset"
                    ) from exc
        paths = Counter(r.path for r in records)
        twice = sorted(p for p, n in paths.items() if n > 1)
        if twice:
            raise DatasetError(
                f"dataset {info.name!r}: {manifest} lists {len(twice)} paths twice "
                f"(first: {twice[:3]}); restore the file or rebuild the dataset"
            )
        return cls(root, info, records)

    def manifest_text(self) -> str:
        """The manifest exactly as save() writes it: one canonical JSON line per record,
        sorted by path."""
        ordered = sorted(self.records, key=lambda r: r.path)
        return "".join(_canonical(r.to_json()) + "\n" for r in ordered)

    def save(self) -> None:
        """Write the manifest then the info, each through a temporary name, so a reader
        never sees a half-written file. Records come back sorted by path."""
        paths = Counter(r.path for r in self.records)
        twice = sorted(p for p, n in paths.items() if n > 1)
        if twice:
            raise DatasetError(f"dataset {self.name!r}: records share paths {twice[:3]}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.records.sort(key=lambda r: r.path)
        _write_atomic(self.root / MANIFEST_FILE, self.manifest_text())
        _write_atomic(
            self.root / INFO_FILE, json.dumps(self.info.to_json(), indent=2, sort_keys=True) + "\n"
        )

    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_text().encode("utf-8")).hexdigest()

    def classes(self, include_pseudo: bool = False) -> list[str]:
        """Sorted labels of the labelled records (pseudo labels only when asked)."""
        return sorted({r.label for r in self._labelled(include_pseudo)})

    def counts(self) -> dict[str, dict[str, int]]:
        """label -> split -> number of records, every label source together; unlabelled
        records under the label "" and unsplit ones under the split ""."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for record in self.records:
            out[record.label][str(record.split)] += 1
        return {label: dict(splits) for label, splits in sorted(out.items())}

    def source_counts(self) -> dict[str, int]:
        """label source -> number of records ("" = unlabelled)."""
        return dict(sorted(Counter(str(r.label_source) for r in self.records).items()))

    def select(self, split: Split, include_pseudo: bool = False) -> list[Record]:
        """The labelled records of one split, in manifest (path) order."""
        chosen = [r for r in self._labelled(include_pseudo) if r.split == split]
        return sorted(chosen, key=lambda r: r.path)

    def image_path(self, record: Record) -> Path:
        return self.root / record.path

    def verify(self, check_hashes: bool = False) -> None:
        """Raise DatasetError listing the images that are missing, empty or (with
        ``check_hashes``) whose bytes no longer match their sha256."""
        missing: list[str] = []
        corrupt: list[str] = []
        for record in self.records:
            path = self.image_path(record)
            if not path.is_file():
                missing.append(record.path)
            elif path.stat().st_size == 0 or (check_hashes and sha256_file(path) != record.sha256):
                corrupt.append(record.path)
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (first: {missing[:5]})")
        if corrupt:
            problems.append(f"{len(corrupt)} corrupt or changed (first: {corrupt[:5]})")
        if problems:
            raise DatasetError(
                f"dataset {self.name!r} at {self.root}: images {'; '.join(problems)}; "
                "restore them, or rebuild the dataset"
            )

    def _labelled(self, include_pseudo: bool) -> Iterable[Record]:
        for record in self.records:
            if record.label and (include_pseudo or record.label_source != LabelSource.PSEUDO):
                yield record


def dataset_dir(datasets_dir: Path, name: str) -> Path:
    """The folder of dataset ``name``; the name must be a plain file name."""
    if not _NAME.match(name):
        raise DatasetError(
            f"dataset name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return datasets_dir / name


def list_datasets(datasets_dir: Path) -> list[str]:
    if not datasets_dir.is_dir():
        return []
    return sorted(
        p.name for p in datasets_dir.iterdir() if p.is_dir() and (p / INFO_FILE).is_file()
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Splits ---------------------------------------------------------------------------

# When a near-duplicate group already has members in several splits, new members join
# the first of these: a test image's duplicate must never train.
_FOLLOW_ORDER = (Split.TEST, Split.VAL, Split.TRAIN, Split.EXCLUDED)


def _group_key(record: Record) -> str:
    return f"phash:{record.phash}" if record.phash else f"sha256:{record.sha256}"


def assign_splits(
    records: Iterable[Record], seed: int, val: float = 0.1, test: float = 0.2
) -> list[Record]:
    """Give every labelled record whose split is NONE a split; return all records.

    Records sharing a phash (or, without one, a sha256) are one group and never straddle
    splits: a group with an already-split member follows it. The rest is stratified by
    label: each class's TEST and VAL shares, counted over its already-split records too,
    approach ``test`` and ``val`` (at least one image each where the share is above 0),
    groups drawn in an order fixed by ``seed``. Pseudo-labelled records only ever go to
    TRAIN (a model's guesses must not grade a model). A class with too few non-pseudo
    images to have one per split raises DatasetError naming it.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split shares val={val}, test={test} must be in [0, 1) with sum < 1")
    out = list(records)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(out):
        groups[_group_key(record)].append(index)

    pending: dict[str, list[str]] = defaultdict(list)  # label -> keys of groups to place
    for key, members in groups.items():
        existing = {out[i].split for i in members} - {Split.NONE}
        todo = [i for i in members if out[i].label and out[i].split == Split.NONE]
        if not todo:
            continue
        if existing:
            follow = next(s for s in _FOLLOW_ORDER if s in existing)
            for i in todo:
                out[i] = replace(out[i], split=follow)
            continue
        human = [out[i].label for i in todo if out[i].label_source != LabelSource.PSEUDO]
        if not human:
            for i in todo:
                out[i] = replace(out[i], split=Split.TRAIN)
            continue
        # A group stratifies by its most common (then smallest) non-pseudo label.
        label = min(Counter(human).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        pending[label].append(key)

    minimum = 1 + (val > 0) + (test > 0)
    totals: Counter[str] = Counter()
    placed: dict[str, Counter[Split]] = defaultdict(Counter)
    for record in out:
        if record.label and record.label_source != LabelSource.PSEUDO:
            totals[record.label] += 1
            if record.split != Split.NONE:
                placed[record.label][record.split] += 1
    small = sorted(label for label in pending if totals[label] < minimum)
    if small:
        detail = ", ".join(f"{label!r} ({totals[label]})" for label in small)
        raise DatasetError(
            f"classes with fewer than {minimum} images cannot be split into train, val and "
            f"test: {detail}; label more images of them, or remove their labels"
        )

    for label in sorted(pending):
        keys = sorted(pending[label])
        random.Random(f"{seed}:{label}").shuffle(keys)
        total = totals[label]
        targets = {
            Split.TEST: max(1, round(test * total)) if test > 0 else 0,
            Split.VAL: max(1, round(val * total)) if val > 0 else 0,
        }
        have = placed[label]
        for key in keys:
            members = [i for i in groups[key] if out[i].label and out[i].split == Split.NONE]
            size = sum(1 for i in members if out[i].label_source != LabelSource.PSEUDO)
            split = next((s for s, n in targets.items() if have[s] < n), Split.TRAIN)
            have[split] += size
            for i in members:
                out[i] = replace(out[i], split=split)
    return out
