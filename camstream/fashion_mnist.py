"""`camstream datasets fetch fashion-mnist`: Zalando's Fashion-MNIST as a dataset folder.

The four idx files come from Debian's ``dataset-fashion-mnist`` package (``apt-get
download`` + ``dpkg-deb``: no install, no root) and are cached under
``<cache_dir>/assets/fashion-mnist/``, each written through a temporary name and
checked before it is renamed, so a second fetch downloads nothing.

The dataset: one 28x28 grey PNG per image, ``images/train/<index>.png`` and
``images/test/<index>.png`` (the index in the official file, so ``origin`` and path
agree), labels as slugs. The official test set is TEST; the official train set is
split TRAIN/VAL (10% val, stratified, seeded, near-duplicates grouped by pHash). A
train image whose pHash equals a test image's is EXCLUDED: a near-duplicate of a test
image must not train the model it grades.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import structlog

from camstream.datasets import (
    INFO_FILE,
    Dataset,
    DatasetError,
    DatasetInfo,
    LabelSource,
    Record,
    Split,
    assign_splits,
    dataset_dir,
)
from camstream.imaging import perceptual_hash
from camstream.stack.assets import AssetError, apt_download

log = structlog.get_logger(__name__)

SOURCE = "fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
# (official set, kind) -> file name in the package and in the cache
FILES: Mapping[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
SET_SIZES: Mapping[str, int] = {"train": 60_000, "test": 10_000}
IMAGE_SIDE = 28
# Fashion-MNIST's classes in label-index order, as slugs.
LABELS: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
VAL_SHARE = 0.1
# Stored PNGs: 880 bytes instead of 580 (both one disk block) and 3x faster to write.
_PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 0]
_CHUNK = 500  # images between progress reports

Progress = Callable[[str, int, int], None]  # (stage, done, total)
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FetchOptions:
    """What makes one Fashion-MNIST dataset differ from another (CI-sized subsets)."""

    train_per_class: int | None = None  # first N per class of the official train set, by seed
    test_per_class: int | None = None  # the same for the official test set
    rare: Mapping[str, float] = field(default_factory=dict)  # label -> share of train+val kept
    seed: int = 0

    def __post_init__(self) -> None:
        for flag, value in (
            ("train_per_class", self.train_per_class),
            ("test_per_class", self.test_per_class),
        ):
            if value is not None and value < 1:
                raise DatasetError(f"{flag}={value}: give a positive number, or leave it unset")
        unknown = sorted(set(self.rare) - set(LABELS))
        if unknown:
            raise DatasetError(
                f"rare: unknown Fashion-MNIST labels {unknown}; use one of {', '.join(LABELS)}"
            )
        for label, share in self.rare.items():
            if not 0 < share <= 1:
                raise DatasetError(f"rare {label}={share}: the share kept must be in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        return {
            "train_per_class": self.train_per_class,
            "test_per_class": self.test_per_class,
            "rare": {k: float(v) for k, v in sorted(self.rare.items())},
            "seed": self.seed,
        }


# The idx files ----------------------------------------------------------------------


def read_idx(path: Path) -> U8:
    """A gzipped idx file (ubyte) as an array: (n,) labels or (n, rows, cols) images."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise AssetError(f"{path}: not a complete gzip file ({exc}); delete it to refetch") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise AssetError(f"{path}: not an unsigned-byte idx file; delete it to refetch")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(data) - offset != int(np.prod(shape)):
        raise AssetError(f"{path}: idx header says {shape}, the data disagree; delete it")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _check(path: Path, official: str, kind: str) -> None:
    array = read_idx(path)
    expected = (
        (SET_SIZES[official],)
        if kind == "labels"
        else (SET_SIZES[official], IMAGE_SIDE, IMAGE_SIDE)
    )
    if array.shape != expected:
        raise AssetError(f"{path}: shape {array.shape}, expected {expected}; delete it")


def cache_folder(cache_dir: Path) -> Path:
    return cache_dir / "assets" / "fashion-mnist"


def ensure_files(cache_dir: Path) -> dict[tuple[str, str], Path]:
    """The four idx files, downloaded and extracted once into the cache."""
    root = cache_folder(cache_dir)
    paths = {key: root / name for key, name in FILES.items()}
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".deb-", dir=root) as tmp:
        deb = apt_download(PACKAGE, Path(tmp))
        wanted = {f"{PACKAGE_DIR}/{name}": key for key, name in FILES.items()}
        proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        found: set[tuple[str, str]] = set()
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    key = wanted.get(member.name.removeprefix("./"))
                    source = tar.extractfile(member) if key and member.isfile() else None
                    if key is None or source is None:
                        continue
                    target = paths[key]
                    partial = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
                    try:
                        with partial.open("wb") as out:
                            shutil.copyfileobj(source, out)
                        _check(partial, *key)
                    except BaseException:
                        partial.unlink(missing_ok=True)
                        raise
                    partial.replace(target)
                    found.add(key)
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.wait()
        missing = sorted(FILES[k] for k in set(FILES) - found)
        if missing:
            raise AssetError(
                f"step 'dpkg-deb --fsys-tarfile {deb.name}': {missing} not under "
                f"/{PACKAGE_DIR} (check `dpkg -c {deb.name}`) {stderr[-1000:]}"
            )
    log.info("fashion_mnist.cached", folder=str(root))
    return paths


# Choosing the images -----------------------------------------------------------------


def first_per_class(labels: U8, per_class: int | None, seed: int, tag: str) -> list[int]:
    """Indices of the first ``per_class`` images of each class in an order fixed by
    ``seed`` (all of them when None), ascending."""
    chosen: list[int] = []
    for cls in range(len(LABELS)):
        indices = [int(i) for i in np.flatnonzero(labels == cls)]
        if per_class is not None:
            random.Random(f"{seed}:{tag}:{cls}").shuffle(indices)
            indices = indices[:per_class]
        chosen += indices
    return sorted(chosen)


def keep_rare(indices: list[int], labels: U8, rare: Mapping[str, float], seed: int) -> list[int]:
    """Keep only ``rare[label]`` of each listed class's images (at least one), by seed."""
    dropped: set[int] = set()
    for label, share in rare.items():
        cls = LABELS.index(label)
        members = [i for i in indices if labels[i] == cls]
        random.Random(f"{seed}:rare:{label}").shuffle(members)
        dropped |= set(members[max(1, round(share * len(members))) :])
    return [i for i in indices if i not in dropped]


# Writing the images -------------------------------------------------------------------


def _write_chunk(images: U8, indices: Sequence[int], folder: Path) -> list[tuple[str, str]]:
    """PNG-encode and write images; (sha256, phash) each.

    One thread: about 0.11 ms an image on this machine. A thread pool was 2-3x slower
    (each step is too short to gain from OpenCV releasing the GIL), and worker
    processes cost more to start than 70,000 small images take.
    """
    out: list[tuple[str, str]] = []
    for index in indices:
        image = images[index]
        ok, buf = cv2.imencode(".png", image, _PNG_OPTIONS)
        if not ok:
            raise DatasetError(f"OpenCV could not encode Fashion-MNIST image {index} as PNG")
        data = buf.tobytes()
        fd = os.open(folder / f"{index:05d}.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        out.append((hashlib.sha256(data).hexdigest(), perceptual_hash(image)))
    return out


def _write_set(
    root: Path,
    official: str,
    images: U8,
    labels: U8,
    indices: list[int],
    progress: Progress | None,
    done: int,
    total: int,
) -> list[Record]:
    folder = root / "images" / official
    folder.mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    for start in range(0, len(indices), _CHUNK):
        batch = indices[start : start + _CHUNK]
        for index, (sha, phash) in zip(batch, _write_chunk(images, batch, folder), strict=True):
            records.append(
                Record(
                    path=f"images/{official}/{index:05d}.png",
                    sha256=sha,
                    label=LABELS[int(labels[index])],
                    label_source=LabelSource.DATASET,
                    split=Split.TEST if official == "test" else Split.NONE,
                    phash=phash,
                    origin=f"{SOURCE}:{official}:{index}",
                )
            )
        done += len(batch)
        if progress is not None:
            progress("images", done, total)
    return records


# The dataset ---------------------------------------------------------------------------


def fetch(
    datasets_dir: Path,
    cache_dir: Path,
    name: str = SOURCE,
    *,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    rare: Mapping[str, float] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Dataset:
    """Build dataset ``name`` from Fashion-MNIST, or return it when it already exists
    with the same options (a different set of options under that name is refused)."""
    options = FetchOptions(train_per_class, test_per_class, dict(rare or {}), seed)
    final = dataset_dir(datasets_dir, name)
    if final.exists():
        return _existing(final, name, options)

    started = time.monotonic()
    if progress is not None:
        progress("download", 0, 1)
    paths = ensure_files(cache_dir)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    if progress is not None:
        progress("download", 1, 1)
    train_labels, test_labels = arrays["train", "labels"], arrays["test", "labels"]
    test_idx = first_per_class(test_labels, test_per_class, seed, "test")
    train_idx = first_per_class(train_labels, train_per_class, seed, "train")
    train_idx = keep_rare(train_idx, train_labels, options.rare, seed)

    datasets_dir.mkdir(parents=True, exist_ok=True)
    building = datasets_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        total = len(test_idx) + len(train_idx)
        test = _write_set(
            building, "test", arrays["test", "images"], test_labels, test_idx, progress, 0, total
        )
        train = _write_set(
            building,
            "train",
            arrays["train", "images"],
            train_labels,
            train_idx,
            progress,
            len(test),
            total,
        )
        test_hashes = {r.phash for r in test}
        train = [replace(r, split=Split.EXCLUDED) if r.phash in test_hashes else r for r in train]
        excluded = sum(r.split == Split.EXCLUDED for r in train)
        train = assign_splits(train, seed, val=VAL_SHARE, test=0.0)
        info = DatasetInfo(
            name=name,
            source=SOURCE,
            created_ms=int(time.time() * 1000),
            seed=seed,
            description=(
                f"Fashion-MNIST (Zalando Research) from Debian's {PACKAGE}: the official "
                f"test set is test; the train set is train/val ({VAL_SHARE:.0%} val, "
                f"stratified, grouped by pHash); {excluded} train images whose pHash equals "
                "a test image's are excluded"
            ),
            options=options.to_json(),
        )
        dataset = Dataset.create(building, info)
        dataset.records = test + train
        dataset.save()
        building.rename(final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    dataset.root = final
    log.info(
        "fashion_mnist.built",
        dataset=name,
        images=len(dataset.records),
        excluded=excluded,
        seconds=round(time.monotonic() - started, 1),
    )
    return dataset


def _existing(final: Path, name: str, options: FetchOptions) -> Dataset:
    if not (final / INFO_FILE).is_file():
        raise DatasetError(
            f"dataset {name!r}: {final} exists but is not a dataset; remove it, or fetch "
            "with another --name"
        )
    dataset = Dataset.load(final)
    if dataset.info.source == SOURCE and dataset.info.options == options.to_json():
        return dataset
    raise DatasetError(
        f"dataset {name!r} already exists at {final} from {dataset.info.source!r} with "
        f"options {dataset.info.options}, not {options.to_json()}; fetch with another --name, "
        f"or delete {final} to rebuild it"
    )
