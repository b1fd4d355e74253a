"""camstream.fashion_mnist and `camstream datasets`: real Fashion-MNIST from Debian's
package (downloaded once, 31 MB, into the cache), built as CI-sized subsets."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from camstream.cli import app
from camstream.datasets import Dataset, DatasetError, LabelSource, Split, sha256_file
from camstream.fashion_mnist import (
    FILES,
    LABELS,
    cache_folder,
    ensure_files,
    fetch,
    read_idx,
)
from camstream.imaging import hamming, perceptual_hash
from camstream.settings import load_settings
from camstream.stack.assets import AssetError

OPTIONS = {"train_per_class": 40, "test_per_class": 10, "rare": {"shirt": 0.25}, "seed": 5}


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return load_settings().cache_dir


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def small(datasets_dir: Path, cache_dir: Path) -> Dataset:
    return fetch(datasets_dir, cache_dir, "small", **OPTIONS)  # type: ignore[arg-type]


def test_the_cached_files_are_the_official_sets(cache_dir: Path) -> None:
    paths = ensure_files(cache_dir)
    assert read_idx(paths["train", "images"]).shape == (60_000, 28, 28)
    assert read_idx(paths["test", "images"]).shape == (10_000, 28, 28)
    train_labels = read_idx(paths["train", "labels"])
    assert Counter(train_labels.tolist()) == dict.fromkeys(range(10), 6000)
    assert not list(cache_folder(cache_dir).glob(".*"))  # no temporary names left


def test_a_second_fetch_downloads_nothing(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the files cached, when ensure_files runs again, apt is never asked
    ensure_files(cache_dir)
    before = {p: p.stat().st_mtime_ns for p in cache_folder(cache_dir).iterdir()}

    def no_download(package: str, into: Path) -> Path:
        raise AssertionError(f"downloaded {package} again")

    monkeypatch.setattr("camstream.fashion_mnist.apt_download", no_download)
    ensure_files(cache_dir)
    assert {p: p.stat().st_mtime_ns for p in cache_folder(cache_dir).iterdir()} == before


def test_read_idx_refuses_a_truncated_file(tmp_path: Path, cache_dir: Path) -> None:
    data = gzip.decompress((cache_folder(cache_dir) / FILES["test", "labels"]).read_bytes())
    truncated = tmp_path / "labels.gz"
    truncated.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(AssetError, match="header says"):
        read_idx(truncated)


def test_subset_has_the_requested_images_labels_and_origins(small: Dataset) -> None:
    # Then the test split is the first 10 per class of the official test set
    counts = Counter((r.label, r.split) for r in small.records)
    assert small.classes() == sorted(LABELS)
    for label in LABELS:
        assert counts[label, Split.TEST] == 10
        train_val = (
            counts[label, Split.TRAIN] + counts[label, Split.VAL] + counts[label, Split.EXCLUDED]
        )
        assert train_val == (10 if label == "shirt" else 40)  # shirt kept at 25%
        assert counts[label, Split.VAL] == (1 if label == "shirt" else 4)  # 10% val, per class
    # And every record is a dataset label with its origin, path and a real 28x28 grey PNG
    for record in small.records:
        official, index = record.origin.removeprefix("fashion-mnist:").split(":")
        assert record.path == f"images/{official}/{int(index):05d}.png"
        assert record.label_source == LabelSource.DATASET
        assert (official == "test") == (record.split == Split.TEST)
        assert len(record.phash) == 16
    small.verify(check_hashes=True)
    image = cv2.imread(str(small.image_path(small.records[0])), cv2.IMREAD_UNCHANGED)
    assert image.shape == (28, 28)


def test_no_near_duplicate_straddles_train_and_test(small: Dataset) -> None:
    test_hashes = {r.phash for r in small.records if r.split == Split.TEST}
    for record in small.records:
        if record.split in (Split.TRAIN, Split.VAL):
            assert record.phash not in test_hashes, record
        if record.split == Split.EXCLUDED:
            assert record.phash in test_hashes
    # And within train/val a phash group stays in one split
    splits: dict[str, set[Split]] = {}
    for record in small.records:
        if record.split != Split.EXCLUDED:
            splits.setdefault(record.phash, set()).add(record.split)
    assert all(len(s) == 1 for s in splits.values())


def test_fetch_is_idempotent_and_reproducible(
    small: Dataset, datasets_dir: Path, cache_dir: Path
) -> None:
    # Given the dataset built, when the same fetch runs again, nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in small.root.iterdir()}
    again = fetch(datasets_dir, cache_dir, "small", **OPTIONS)  # type: ignore[arg-type]
    assert again.manifest_sha256() == small.manifest_sha256()
    assert {p: p.stat().st_mtime_ns for p in small.root.iterdir()} == before
    # And the same options under another name build the same manifest (same bytes, splits)
    twin = fetch(datasets_dir, cache_dir, "twin", **OPTIONS)  # type: ignore[arg-type]
    assert twin.manifest_sha256() == small.manifest_sha256()
    assert sha256_file(twin.root / "manifest.jsonl") == sha256_file(small.root / "manifest.jsonl")
    assert not list(datasets_dir.glob(".tmp-*"))


def test_other_options_under_an_existing_name_are_refused(
    small: Dataset, datasets_dir: Path, cache_dir: Path
) -> None:
    with pytest.raises(DatasetError, match=r"already exists.*another --name, or delete"):
        fetch(datasets_dir, cache_dir, "small", train_per_class=41, test_per_class=10)


def test_unknown_rare_labels_are_refused_naming_the_real_ones(
    datasets_dir: Path, cache_dir: Path
) -> None:
    with pytest.raises(DatasetError, match=r"unknown Fashion-MNIST labels \['shoe'\].*ankle-boot"):
        fetch(datasets_dir, cache_dir, "bad", rare={"shoe": 0.1})
    assert not (datasets_dir / "bad").exists()


@pytest.fixture
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI configures logging onto CliRunner's stderr, closed after the call; cached
    loggers would keep writing there in later tests."""
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *a, **k: None)


@pytest.mark.usefixtures("_quiet_logging")
def test_cli_fetch_list_and_show(tmp_path: Path, cache_dir: Path) -> None:
    runner = CliRunner()
    env = {"CAMSTREAM_DATASETS_DIR": str(tmp_path), "CAMSTREAM_CACHE_DIR": str(cache_dir)}
    # When a subset is fetched through the CLI
    result = runner.invoke(
        app,
        [
            *("datasets", "fetch", "fashion-mnist", "--name", "tiny"),
            *("--train-per-class", "6", "--test-per-class", "3", "--rare", "bag=0.5"),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "dataset tiny (fashion-mnist): 87 images, 10 classes" in result.output
    # Then list and show report it
    listed = runner.invoke(app, ["datasets", "list", "--json"], env=env)
    assert json.loads(listed.stdout)["datasets"] == [
        {"name": "tiny", "source": "fashion-mnist", "images": 87, "classes": 10}
    ]
    shown = json.loads(runner.invoke(app, ["datasets", "show", "tiny", "--json"], env=env).stdout)
    assert shown["counts"]["bag"]["test"] == 3
    assert sum(shown["counts"]["bag"].get(s, 0) for s in ("train", "val", "excluded")) == 3
    assert shown["label_sources"] == {"dataset": 87}
    assert shown["manifest_sha256"] == Dataset.load(tmp_path / "tiny").manifest_sha256()
    table = runner.invoke(app, ["datasets", "show", "tiny"], env=env).stdout
    assert "manifest sha256:" in table and "ankle-boot" in table
    # And a bad --rare flag is a config error naming the form
    bad = runner.invoke(app, ["datasets", "fetch", "fashion-mnist", "--rare", "bag"], env=env)
    assert bad.exit_code == 2
    assert "LABEL=FRACTION" in bad.output


def test_perceptual_hash_matches_copies_and_tells_products_apart(cache_dir: Path) -> None:
    # Given real product photos
    images = read_idx(ensure_files(cache_dir)["test", "images"])[:200]
    hashes = [perceptual_hash(image) for image in images]
    # Then a 4x upscaled JPEG copy of each (as the conveyor camera sends them) hashes
    # within a few bits of it, as does its BGR version exactly
    for image, original in zip(images[:50], hashes[:50], strict=True):
        big = cv2.resize(image, (112, 112), interpolation=cv2.INTER_LINEAR)
        jpeg = cv2.imdecode(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], 1)
        assert hamming(original, perceptual_hash(jpeg)) <= 6
        assert perceptual_hash(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)) == original
    # And different photos are far apart on average
    apart = [hamming(a, b) for a, b in pairwise(hashes)]
    assert sum(apart) / len(apart) > 16
    with pytest.raises(ValueError, match="different lengths"):
        hamming("00", "000")
