"""camstream.datasets: the manifest, its hash, splits and the label precedence rule."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from camstream.datasets import (
    MANIFEST_FILE,
    Dataset,
    DatasetError,
    DatasetInfo,
    LabelSource,
    Record,
    Split,
    assign_splits,
    dataset_dir,
    list_datasets,
    relabel,
    sha256_file,
)


def _records(classes: int = 4, per_class: int = 50, group: int = 1) -> list[Record]:
    """Labelled, unsplit records; every ``group`` consecutive ones of a class share a phash."""
    out = []
    for c in range(classes):
        for i in range(per_class):
            out.append(
                Record(
                    path=f"images/c{c}/{i:04d}.png",
                    sha256=f"{c:02d}{i:062d}",
                    label=f"class-{c}",
                    label_source=LabelSource.HUMAN,
                    phash=f"{c:04x}{i // group:012x}",
                )
            )
    return out


def test_record_json_round_trip_keeps_every_field_and_omits_unset_ones() -> None:
    # Given a record with every field set, and a bare one
    full = Record(
        path="images/cam/1.jpg",
        sha256="ab" * 32,
        label="bag",
        label_source=LabelSource.PSEUDO,
        split=Split.TRAIN,
        phash="0123456789abcdef",
        origin="camera",
        camera="cam-1",
        seq=7,
        capture_ts_ms=1_700_000_000_000,
        pseudo_model="shop:3",
        score=0.97,
        features={"scene": "street", "lux": 12.5, "night": False},
    )
    bare = Record(path="images/a.png", sha256="cd" * 32)
    # Then both survive JSON unchanged, and the bare one writes only the core fields
    assert Record.from_json(full.to_json()) == full
    assert Record.from_json(bare.to_json()) == bare
    assert set(bare.to_json()) == {"path", "sha256", "label", "label_source", "split"}


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.png", "images/../../x.png", "images\\x.png", "./a.png"]
)
def test_record_rejects_paths_that_leave_the_dataset(path: str) -> None:
    with pytest.raises(ValueError, match="plain posix path"):
        Record.from_json({"path": path, "sha256": "00"})


def test_manifest_round_trip_and_its_hash_is_stable_and_order_free(tmp_path: Path) -> None:
    # Given a dataset saved with its records in a shuffled order
    records = assign_splits(_records(), seed=1)
    dataset = Dataset.create(tmp_path / "ds", DatasetInfo("ds", "test", 1, seed=1))
    dataset.records = list(reversed(records))
    dataset.save()
    # When it is loaded back
    loaded = Dataset.load(tmp_path / "ds")
    # Then the records and the info are equal, sorted by path, and the hash is the one
    # of the file as written
    assert loaded.records == sorted(records, key=lambda r: r.path)
    assert loaded.info == dataset.info
    assert loaded.manifest_sha256() == dataset.manifest_sha256()
    assert loaded.manifest_sha256() == sha256_file(tmp_path / "ds" / MANIFEST_FILE)
    # And saving again writes the same bytes, with no temporary file left
    before = (tmp_path / "ds" / MANIFEST_FILE).read_bytes()
    loaded.save()
    assert (tmp_path / "ds" / MANIFEST_FILE).read_bytes() == before
    assert not list((tmp_path / "ds").glob(".tmp-*"))
    # And one changed label changes the hash
    loaded.records[0] = replace(loaded.records[0], label="other")
    assert loaded.manifest_sha256() != dataset.manifest_sha256()


def test_load_names_the_file_and_line_of_a_bad_manifest_line(tmp_path: Path) -> None:
    dataset = Dataset.create(tmp_path / "ds", DatasetInfo("ds", "test", 1))
    dataset.records = _records(classes=1, per_class=3)
    dataset.save()
    manifest = tmp_path / "ds" / MANIFEST_FILE
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], '{"path": "images/x.png"}', lines[2]]) + "\n")
    with pytest.raises(DatasetError, match=rf"{manifest}:2: bad manifest line.*sha256"):
        Dataset.load(tmp_path / "ds")


def test_load_of_a_folder_without_a_dataset_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="datasets fetch"):
        Dataset.load(tmp_path / "nothing")


def test_assign_splits_is_stratified_and_reproducible_with_the_seed() -> None:
    # Given 4 classes of 50 distinct images
    records = _records()
    # When splits are assigned twice with one seed, and once with another
    first = assign_splits(records, seed=7)
    again = assign_splits(records, seed=7)
    other = assign_splits(records, seed=8)
    # Then every class gets 20% test and 10% val exactly
    counts = Counter((r.label, r.split) for r in first)
    for c in range(4):
        label = f"class-{c}"
        assert counts[label, Split.TEST] == 10
        assert counts[label, Split.VAL] == 5
        assert counts[label, Split.TRAIN] == 35
    # And the same seed gives the same splits, another seed others
    assert first == again
    assert [r.split for r in first] != [r.split for r in other]


def test_assign_splits_keeps_near_duplicates_in_one_split() -> None:
    # Given groups of 3 records sharing a phash
    records = assign_splits(_records(per_class=60, group=3), seed=3)
    # Then no group straddles splits
    splits: dict[str, set[Split]] = {}
    for r in records:
        splits.setdefault(r.phash, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {s for group in splits.values() for s in group} == {Split.TRAIN, Split.VAL, Split.TEST}


def test_a_new_near_duplicate_follows_its_groups_existing_split() -> None:
    # Given a split dataset and a new image with the phash of a test image
    records = assign_splits(_records(), seed=0)
    test_image = next(r for r in records if r.split == Split.TEST)
    new = Record(
        "images/new.png", "ff" * 32, test_image.label, LabelSource.HUMAN, phash=test_image.phash
    )
    # When splits are assigned again
    result = assign_splits([*records, new], seed=0)
    # Then the new image joins the test split and nothing else moves
    assert result[-1].split == Split.TEST
    assert result[:-1] == records


def test_assign_splits_refuses_a_class_with_one_image_naming_it() -> None:
    records = [
        *_records(classes=2, per_class=10),
        Record("images/z.png", "ee" * 32, "zebra", LabelSource.HUMAN),
    ]
    with pytest.raises(DatasetError, match=r"'zebra' \(1\)"):
        assign_splits(records, seed=0)


def test_assign_splits_leaves_unlabelled_alone_and_sends_pseudo_labels_to_train() -> None:
    unlabelled = Record("images/u.png", "aa" * 32)
    pseudo = Record(
        "images/p.png", "bb" * 32, "class-0", LabelSource.PSEUDO, pseudo_model="m:1", score=0.9
    )
    result = assign_splits([*_records(classes=1, per_class=10), unlabelled, pseudo], seed=0)
    assert result[-2].split == Split.NONE
    assert result[-1].split == Split.TRAIN


def test_human_labels_replace_pseudo_labels_and_never_the_reverse() -> None:
    blank = Record("images/a.png", "aa" * 32)
    # A pseudo label fills an unlabelled record, with its model and score
    pseudo = relabel(blank, "bag", LabelSource.PSEUDO, pseudo_model="m:1", score=0.93)
    assert (pseudo.label, pseudo.label_source, pseudo.pseudo_model, pseudo.score) == (
        "bag",
        LabelSource.PSEUDO,
        "m:1",
        0.93,
    )
    # A newer model's pseudo label replaces an older one
    assert relabel(pseudo, "coat", LabelSource.PSEUDO, "m:2", 0.8).pseudo_model == "m:2"
    # A human label replaces the pseudo label and clears its model and score
    human = relabel(pseudo, "shirt", LabelSource.HUMAN)
    assert (human.label, human.label_source, human.pseudo_model, human.score) == (
        "shirt",
        LabelSource.HUMAN,
        "",
        None,
    )
    # And a pseudo label (or a dataset's) never replaces a human one
    assert relabel(human, "bag", LabelSource.PSEUDO, "m:3", 0.99) == human
    assert relabel(human, "bag", LabelSource.DATASET) == human


def test_select_and_classes_leave_out_pseudo_labels_unless_asked() -> None:
    records = assign_splits(_records(classes=1, per_class=10), seed=0)
    pseudo = Record("images/p.png", "bb" * 32, "extra", LabelSource.PSEUDO, Split.TRAIN)
    dataset = Dataset(Path("/nowhere"), DatasetInfo("d", "test", 1), [*records, pseudo])
    assert dataset.classes() == ["class-0"]
    assert dataset.classes(include_pseudo=True) == ["class-0", "extra"]
    assert pseudo not in dataset.select(Split.TRAIN)
    assert pseudo in dataset.select(Split.TRAIN, include_pseudo=True)
    assert dataset.counts() == {"class-0": {"train": 7, "val": 1, "test": 2}, "extra": {"train": 1}}
    assert dataset.source_counts() == {"human": 10, "pseudo": 1}


def test_verify_lists_missing_and_changed_images(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    records = []
    for name in ("a", "b", "c"):
        path = root / "images" / f"{name}.png"
        path.write_bytes(name.encode())
        records.append(Record(f"images/{name}.png", sha256_file(path)))
    dataset = Dataset(root, DatasetInfo("ds", "test", 1), records)
    dataset.verify(check_hashes=True)
    (root / "images" / "a.png").unlink()
    (root / "images" / "b.png").write_bytes(b"changed")
    with pytest.raises(DatasetError, match=r"1 missing") as without_hashes:
        dataset.verify()  # sizes only: b is not empty, so not reported
    assert "b.png" not in str(without_hashes.value)
    with pytest.raises(DatasetError, match=r"1 missing .*a\.png.*1 corrupt or changed .*b\.png"):
        dataset.verify(check_hashes=True)


def test_dataset_names_are_plain_file_names(tmp_path: Path) -> None:
    assert dataset_dir(tmp_path, "fashion-mnist_small.v2") == tmp_path / "fashion-mnist_small.v2"
    for bad in ("../up", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(DatasetError, match="not allowed"):
            dataset_dir(tmp_path, bad)


def test_list_datasets_lists_only_dataset_folders(tmp_path: Path) -> None:
    Dataset.create(tmp_path / "b", DatasetInfo("b", "test", 1)).save()
    Dataset.create(tmp_path / "a", DatasetInfo("a", "test", 1)).save()
    (tmp_path / "not-a-dataset").mkdir()
    assert list_datasets(tmp_path) == ["a", "b"]
    assert list_datasets(tmp_path / "missing") == []
