"""camstream.labels and `camstream label`: human labels from a CSV or class folders, on
real Fashion-MNIST images; bad input gets a clear message and changes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from camstream.cli import app
from camstream.datasets import (
    Dataset,
    DatasetError,
    DatasetInfo,
    LabelSource,
    Record,
    Split,
    relabel,
)
from camstream.fashion_mnist import LABELS, ensure_files, read_idx
from camstream.imaging import perceptual_hash
from camstream.labels import import_csv, import_folder
from camstream.settings import load_settings

CLASSES = ("trouser", "bag", "sneaker")
PER_CLASS = 5


@pytest.fixture(scope="module")
def photos() -> dict[str, list[np.ndarray]]:
    """Real 28x28 product photos: the first PER_CLASS+3 test images of each class."""
    paths = ensure_files(load_settings().cache_dir)
    images, labels = read_idx(paths["test", "images"]), read_idx(paths["test", "labels"])
    return {
        name: [images[i] for i in np.flatnonzero(labels == LABELS.index(name))[: PER_CLASS + 3]]
        for name in CLASSES
    }


@pytest.fixture
def unlabelled(
    tmp_path: Path, photos: dict[str, list[np.ndarray]]
) -> tuple[Dataset, dict[str, str]]:
    """A saved dataset of camera frames with no labels, and each path's true label."""
    root = tmp_path / "datasets" / "frames"
    (root / "images" / "cam").mkdir(parents=True)
    records, truth = [], {}
    seq = 0
    for name in CLASSES:
        for image in photos[name][:PER_CLASS]:
            data = cv2.imencode(".png", image)[1].tobytes()
            path = f"images/cam/{seq:03d}.png"
            (root / path).write_bytes(data)
            records.append(
                Record(
                    path,
                    hashlib.sha256(data).hexdigest(),
                    phash=perceptual_hash(image),
                    origin="camera",
                    camera="cam-1",
                    seq=seq,
                )
            )
            truth[path] = name
            seq += 1
    dataset = Dataset.create(root, DatasetInfo("frames", "collect", 1, seed=3))
    dataset.records = records
    dataset.save()
    return Dataset.load(root), truth


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _state(dataset: Dataset) -> dict[str, bytes]:
    """Every file of the dataset folder and its bytes: 'unchanged on disk'."""
    return {
        str(p.relative_to(dataset.root)): p.read_bytes()
        for p in sorted(dataset.root.rglob("*"))
        if p.is_file()
    }


def test_csv_paths_label_the_images_as_human_and_split_them(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    # Given a label file with relative paths, and one absolute path inside the dataset
    rows = [f"{p},{label}" for p, label in truth.items()]
    first = next(iter(truth))
    rows[0] = f"{dataset.root / first},{truth[first]}"
    labels = _csv(tmp_path / "labels.csv", "path,label", rows)
    # When it is imported
    report = import_csv(dataset, labels)
    # Then every image has its human label and a split, saved to disk
    assert (report.rows, report.labelled, report.added) == (15, 15, 0)
    loaded = Dataset.load(dataset.root)
    assert {r.path: r.label for r in loaded.records} == truth
    assert {r.label_source for r in loaded.records} == {LabelSource.HUMAN}
    for name in CLASSES:
        splits = sorted(r.split for r in loaded.records if r.label == name)
        assert splits.count(Split.TEST) == 1 and splits.count(Split.VAL) == 1
    # And importing the same file again changes nothing
    again = import_csv(loaded, labels)
    assert (again.labelled, again.unchanged) == (0, 15)


def test_csv_camera_and_seq_label_collected_frames(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    rows = [f"cam-1,{i},{label}" for i, label in enumerate(truth.values())]
    import_csv(dataset, _csv(tmp_path / "frames.csv", "camera,seq,label", rows))
    by_seq = {r.seq: r.label for r in Dataset.load(dataset.root).records}
    assert by_seq == dict(enumerate(truth.values()))


def test_csv_naming_missing_images_says_how_many_and_changes_nothing(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    before = _state(dataset)
    rows = [f"{p},{label}" for p, label in truth.items()]
    rows += [f"images/cam/missing-{i}.png,bag" for i in range(7)]
    labels = _csv(tmp_path / "labels.csv", "path,label", rows)
    with pytest.raises(DatasetError) as error:
        import_csv(dataset, labels)
    message = str(error.value)
    assert "7 of 22 rows name images that are not in dataset 'frames'" in message
    assert "line 17 images/cam/missing-0.png" in message and "(2 more)" in message
    assert "Nothing was changed" in message
    assert _state(dataset) == before


def test_csv_with_unknown_columns_is_refused(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    before = _state(dataset)
    labels = _csv(tmp_path / "labels.csv", "path,label,colour", [f"{next(iter(truth))},bag,red"])
    with pytest.raises(
        DatasetError, match=r"unknown columns \['colour'\].*`path,label` or `camera,seq,label`"
    ):
        import_csv(dataset, labels)
    assert _state(dataset) == before


def test_a_class_with_one_image_is_refused_naming_it(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    before = _state(dataset)
    rows = [f"{p},{label}" for p, label in truth.items()]
    rows[0] = rows[0].rsplit(",", 1)[0] + ",unicorn"
    with pytest.raises(DatasetError, match=r"'unicorn' \(1\)"):
        import_csv(dataset, _csv(tmp_path / "labels.csv", "path,label", rows))
    assert _state(dataset) == before


def test_csv_giving_one_image_two_labels_is_refused(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    path = next(iter(truth))
    with pytest.raises(
        DatasetError, match=r"two different labels.*'trouser' \(line 2\) and 'bag' \(line 3\)"
    ):
        import_csv(
            dataset, _csv(tmp_path / "l.csv", "path,label", [f"{path},trouser", f"{path},bag"])
        )


def test_csv_path_outside_the_dataset_is_refused(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, _ = unlabelled
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"outside dataset 'frames'.*import-folder"):
        import_csv(dataset, _csv(tmp_path / "l.csv", "path,label", [f"{outside},bag"]))


def test_human_labels_replace_pseudo_labels_and_pseudo_never_replaces_human(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    # Given every image pseudo-labelled "coat" by a model
    dataset.records = [
        relabel(r, "coat", LabelSource.PSEUDO, "shop:1", 0.95) for r in dataset.records
    ]
    dataset.save()
    # When a human labels them
    report = import_csv(
        dataset, _csv(tmp_path / "l.csv", "path,label", [f"{p},{x}" for p, x in truth.items()])
    )
    # Then the human labels replace the pseudo ones, model and score cleared
    assert report.replaced_pseudo == 15
    loaded = Dataset.load(dataset.root)
    assert all(
        r.label == truth[r.path] and r.label_source == LabelSource.HUMAN for r in loaded.records
    )
    assert all(r.pseudo_model == "" and r.score is None for r in loaded.records)
    # And a later pseudo-labelling pass leaves them alone
    assert [
        relabel(r, "coat", LabelSource.PSEUDO, "shop:2", 0.99) for r in loaded.records
    ] == loaded.records


def test_folder_import_copies_images_with_human_labels(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path, photos: dict[str, list[np.ndarray]]
) -> None:
    dataset, _ = unlabelled
    # Given class folders of new photos, plus a non-image file
    folder = tmp_path / "import"
    for name in ("bag", "sneaker"):
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(photos[name][PER_CLASS:]):
            cv2.imwrite(str(folder / name / f"p{i}.png"), image)
    (folder / "bag" / "notes.txt").write_text("not an image")
    # When it is imported
    report = import_folder(dataset, folder)
    # Then the images are copied into images/import/<label>/, human-labelled, hashed and split
    assert (report.rows, report.added, report.skipped) == (6, 6, 1)
    loaded = Dataset.load(dataset.root)
    imported = [r for r in loaded.records if r.path.startswith("images/import/")]
    assert sorted(r.path for r in imported) == [
        f"images/import/{n}/p{i}.png" for n in ("bag", "sneaker") for i in range(3)
    ]
    for record in imported:
        assert record.label == record.path.split("/")[2]
        assert record.label_source == LabelSource.HUMAN
        assert record.split in (Split.TRAIN, Split.VAL, Split.TEST)
        assert record.phash == perceptual_hash(cv2.imread(str(loaded.image_path(record))))
    loaded.verify(check_hashes=True)


def test_folder_with_a_corrupt_image_is_refused_naming_it(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path, photos: dict[str, list[np.ndarray]]
) -> None:
    dataset, _ = unlabelled
    before = _state(dataset)
    folder = tmp_path / "import"
    (folder / "bag").mkdir(parents=True)
    for i, image in enumerate(photos["bag"][:3]):
        cv2.imwrite(str(folder / "bag" / f"p{i}.png"), image)
    good = (folder / "bag" / "p0.png").read_bytes()
    (folder / "bag" / "broken.png").write_bytes(good[: len(good) // 3])
    with pytest.raises(
        DatasetError, match=r"1 images cannot be decoded \(.*bag/broken\.png\).*Nothing was changed"
    ):
        import_folder(dataset, folder)
    assert _state(dataset) == before


@pytest.fixture
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI configures logging onto CliRunner's stderr, closed after the call; cached
    loggers would keep writing there in later tests."""
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *a, **k: None)


@pytest.mark.usefixtures("_quiet_logging")
def test_cli_label_import_reports_and_exits_2_on_bad_input(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    runner = CliRunner()
    env = {"CAMSTREAM_DATASETS_DIR": str(dataset.root.parent)}
    good = _csv(tmp_path / "good.csv", "path,label", [f"{p},{x}" for p, x in truth.items()])
    result = runner.invoke(app, ["label", "import", str(good), "--dataset", "frames"], env=env)
    assert result.exit_code == 0, result.output
    assert "15 labelled" in result.stdout
    bad = _csv(tmp_path / "bad.csv", "file,label", ["a.png,bag"])
    result = runner.invoke(app, ["label", "import", str(bad), "--dataset", "frames"], env=env)
    assert result.exit_code == 2
    assert "unknown columns ['file']" in result.output
    neither = runner.invoke(app, ["label", "import", "--dataset", "frames"], env=env)
    assert neither.exit_code == 2 and "--from-model" in neither.output


def test_a_relabelled_record_keeps_its_split(
    unlabelled: tuple[Dataset, dict[str, str]], tmp_path: Path
) -> None:
    dataset, truth = unlabelled
    rows = [f"{p},{x}" for p, x in truth.items()]
    import_csv(dataset, _csv(tmp_path / "a.csv", "path,label", rows))
    before = {r.path: r.split for r in Dataset.load(dataset.root).records}
    moved = Dataset.load(dataset.root).records[0]
    import_csv(
        Dataset.load(dataset.root), _csv(tmp_path / "b.csv", "path,label", [f"{moved.path},bag"])
    )
    after = Dataset.load(dataset.root)
    assert {r.path: r.split for r in after.records} == before
    assert next(r for r in after.records if r.path == moved.path).label == "bag"
