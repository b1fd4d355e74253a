"""The model lifecycle as an ML engineer runs it, through the `camstream` program:
collect -> label -> train -> evaluate on frames of the two street cameras (real broker,
real Feast), and the promotion gate on real trained versions (a forced seed champion,
a better candidate accepted, a worse one refused, a truncated one refused by name, the
history holding every decision). Bad input is refused with its message and leaves the
registry as it was."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from camstream import modelrepo
from camstream.cameras import CameraSpec
from camstream.cli import app
from camstream.datasets import Dataset, LabelSource, Split, dataset_dir
from camstream.fashion_mnist import fetch
from camstream.imaging import encode_jpeg
from camstream.records import FrameHeaders
from camstream.registry import Registry
from camstream.settings import Settings
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

STREET = CameraSpec(id="life-street", source="unused", site="old-town", zone="pedestrian-street")
BIKES = CameraSpec(id="life-bikes", source="unused", site="old-town", zone="bike-lane")
SCENES = {STREET.id: "pedestrian-street", BIKES.id: "bike-lane"}
FRAMES_PER_CAMERA = 24
# The same subset sizes as test_train_fashion.py: its embeddings are cached already.
FASHION_SIZES = {"train_per_class": 100, "test_per_class": 50}


@pytest.fixture(autouse=True, scope="module")
def _quiet_logging() -> Iterator[None]:
    # CliRunner closes the stderr it lends; loggers must not keep it past the call. The
    # scope is the module's, so that the module fixtures' commands are covered too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("camstream.observability.configure_logging", lambda *_a, **_k: None)
        yield


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def _ok(result: Result) -> str:
    """The command's stdout, once it has succeeded (its own output comes last: log lines
    of this process's stack fixture may come before it)."""
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout


def _last_json(stdout: str) -> dict[str, object]:
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: what "nothing changed" is checked on."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _video_frames(path: Path, every: int, count: int) -> list[bytes]:
    capture = cv2.VideoCapture(str(path))
    frames: list[bytes] = []
    index = 0
    try:
        while len(frames) < count:
            ok, image = capture.read()
            assert ok, f"{path} has fewer than {count * every} frames"
            if index % every == 0:
                frames.append(encode_jpeg(image, 85))
            index += 1
    finally:
        capture.release()
    return frames


def test_street_cameras_collect_label_train_evaluate(stack: Stack, tmp_path: Path) -> None:
    # Given the two street cameras registered in Feast and, after that, their frames on
    # the real broker, one a second of capture time
    stack.register(STREET, BIKES)
    env = {
        "CAMSTREAM_STATE_DIR": str(stack.settings.state_dir),
        "CAMSTREAM_KAFKA_BOOTSTRAP": stack.info.kafka_bootstrap,
        "CAMSTREAM_FEAST_REPO": str(stack.info.feast_repo),
        "CAMSTREAM_TOPIC_PREFIX": stack.settings.topic_prefix,
        "CAMSTREAM_DATASETS_DIR": str(tmp_path / "datasets"),
        "CAMSTREAM_REGISTRY_DIR": str(tmp_path / "registry"),
    }
    since = int(time.time() * 1000)
    producer = stack.producer()
    videos = {STREET.id: stack.assets.vtest_video, BIKES.id: stack.assets.bikes_video}
    for camera, video in videos.items():
        every = 30 if camera == STREET.id else 10
        for seq, jpeg in enumerate(_video_frames(video, every, FRAMES_PER_CAMERA), start=1):
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            headers = FrameHeaders(
                camera, seq, since + 1000 * seq, image.shape[1], image.shape[0]
            ).to_kafka()
            producer.produce(
                stack.settings.frames_topic, value=jpeg, key=camera.encode(), headers=headers
            )
    assert producer.flush(15) == 0

    # When each camera is collected into one dataset
    for camera in videos:
        summary = _last_json(
            _ok(
                _cli(
                    env,
                    "collect",
                    "--camera",
                    camera,
                    "--dataset",
                    "streets",
                    "--since",
                    str(since),
                    "--every-s",
                    "0.5",
                    "--json",
                )
            )
        )
        assert summary["kept"] >= FRAMES_PER_CAMERA // 2, summary

    # Then every collected frame kept its row of point-in-time features
    root = dataset_dir(Path(env["CAMSTREAM_DATASETS_DIR"]), "streets")
    collected = Dataset.load(root).records
    assert {r.camera for r in collected} == set(SCENES)
    for record in collected:
        spec = STREET if record.camera == STREET.id else BIKES
        assert (record.features.get("site"), record.features.get("zone")) == (
            spec.site,
            spec.zone,
        ), record

    # When each frame gets its camera's scene label from a CSV file
    labels = tmp_path / "scenes.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["camera", "seq", "label"])
        writer.writerows((r.camera, r.seq, SCENES[r.camera]) for r in collected)
    _ok(_cli(env, "label", "import", str(labels), "--dataset", "streets"))
    labelled = Dataset.load(root)
    assert all(r.label_source == LabelSource.HUMAN for r in labelled.records)
    assert {r.split.value for r in labelled.records} >= {"train", "val", "test"}

    # And a model is trained on it, then evaluated again through `camstream evaluate`
    ref = _ok(
        _cli(env, "train", "--dataset", "streets", "--model", "scenes", "--max-epochs", "20")
    ).split()[-1]
    assert ref == "scenes:1"
    _ok(_cli(env, "evaluate", "--model", ref, "--dataset", "streets"))

    # Then the report separates the two scenes better than the majority class does
    registry = Registry(Path(env["CAMSTREAM_REGISTRY_DIR"]))
    version = registry.resolve(ref)
    report_dir = registry.report_dir(version, "streets", "test")
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n"] == len(labelled.select(Split.TEST))
    assert report["macro_f1"] > report["baselines"]["majority"]["macro_f1"] + 0.3, report
    for figure in ("confusion.png", "reliability.png"):
        assert cv2.imread(str(report_dir / figure)) is not None
    assert version.labels() == sorted(SCENES.values())


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A registry with two trained versions of one model on one CI-sized Fashion-MNIST
    subset: 1 is a weak one (one epoch at a tiny learning rate), 2 a properly trained
    one; and the environment the CLI runs with."""
    root = tmp_path_factory.mktemp("lifecycle")
    env = {
        "CAMSTREAM_STATE_DIR": str(root / "state"),
        "CAMSTREAM_DATASETS_DIR": str(root / "datasets"),
        "CAMSTREAM_REGISTRY_DIR": str(root / "registry"),
        "CAMSTREAM_MODEL_REPO": str(root / "triton_repo"),
    }
    fetch(Path(env["CAMSTREAM_DATASETS_DIR"]), Settings().cache_dir, "fm", **FASHION_SIZES)
    weak = root / "weak.toml"
    weak.write_text('head = "linear"\nmax_epochs = 1\nlr = 1e-6\nexplain_per_class = 0\n')
    good = root / "good.toml"
    good.write_text("explain_per_class = 1\n")
    for config in (weak, good):
        _ok(_cli(env, "train", "--dataset", "fm", "--model", "garments", "--config", str(config)))
    return env


def test_gate_forced_seed_then_accepts_better_refuses_worse_and_history_holds_all(
    fashion: dict[str, str],
) -> None:
    env = fashion
    registry = Registry(Path(env["CAMSTREAM_REGISTRY_DIR"]))
    repo = Path(env["CAMSTREAM_MODEL_REPO"])
    weak, good = (registry.resolve(f"garments:{n}") for n in (1, 2))
    assert good.report()["macro_f1"] > weak.report()["macro_f1"] + 0.2

    # Given the weak version forced in as the first champion, with a reason
    refused_first = _cli(env, "promote", "garments:1")
    assert refused_first.exit_code == 1, refused_first.output
    assert "logreg_pixels" in refused_first.output or "baseline" in refused_first.output
    _ok(_cli(env, "promote", "garments:1", "--force", "--reason", "seed champion"))
    assert registry.aliases("garments")["champion"] == 1

    # When the properly trained version is promoted, the gate accepts it: it beats the
    # champion with McNemar's test on the same test images, and the baselines
    accepted = _ok(_cli(env, "promote", "garments:2"))
    assert "passed the gate" in accepted
    assert registry.aliases("garments")["champion"] == 2
    assert modelrepo.model_versions(repo / "garments") == (1, 2)
    assert (repo / "garments" / "2" / "model.onnx").read_bytes() == (
        good.path / "model.onnx"
    ).read_bytes()
    assert modelrepo.read_labels(modelrepo.labels_path(repo, "garments", 2)) == good.labels()

    # When the weak version is promoted again, it is refused with its reasons, and nothing
    # but the history changes
    before = _tree(repo)
    worse = _cli(env, "promote", "garments:1")
    assert worse.exit_code == 1, worse.output
    assert "does not beat the champion" in worse.output, worse.output
    assert registry.aliases("garments")["champion"] == 2
    assert _tree(repo) == before

    # Then the history holds every decision, in order, with its figures
    history = registry.history("garments")
    champion_events = [
        (h["event"], h.get("candidate", h["to"]), h["forced"])
        for h in history
        if h["alias"] == "champion"
    ]
    assert champion_events == [
        ("refused", 1, False),
        ("alias", 1, True),
        ("alias", 2, False),
        ("refused", 1, False),
    ]
    accepted_entry = next(
        h for h in history if (h["alias"], h["event"], h["to"]) == ("champion", "alias", 2)
    )
    assert accepted_entry["metrics"].get("p_value", 1.0) < 0.05, accepted_entry
    listed = _ok(_cli(env, "models", "list"))
    assert "garments" in listed and "champion" in listed, listed


def test_a_truncated_version_is_refused_by_name(fashion: dict[str, str]) -> None:
    env = fashion
    registry = Registry(Path(env["CAMSTREAM_REGISTRY_DIR"]))
    weak = registry.resolve("garments:1")
    onnx = weak.path / "model.onnx"
    data = onnx.read_bytes()
    onnx.chmod(0o644)
    try:
        onnx.write_bytes(data[: len(data) // 2])
        result = _cli(env, "promote", "garments:1", "--force", "--reason", "try")
        assert result.exit_code == 2, result.output
        assert "garments" in result.output and "model.onnx" in result.output, result.output
    finally:
        onnx.write_bytes(data)
        onnx.chmod(0o444)
    registry.resolve("garments:1")  # whole again


def test_bad_input_is_refused_with_its_message_and_the_registry_is_unchanged(
    fashion: dict[str, str], tmp_path: Path
) -> None:
    env = fashion
    registry_root = Path(env["CAMSTREAM_REGISTRY_DIR"])
    before = _tree(registry_root)
    datasets = Path(env["CAMSTREAM_DATASETS_DIR"])
    fm = dataset_dir(datasets, "fm")

    # A label file naming images that are not in the dataset
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nimages/nowhere/1.png,coat\nimages/nowhere/2.png,bag\n")
    manifest = (fm / "manifest.jsonl").read_bytes()
    result = _cli(env, "label", "import", str(missing), "--dataset", "fm")
    assert result.exit_code == 2 and "images/nowhere/1.png" in result.output, result.output
    assert (fm / "manifest.jsonl").read_bytes() == manifest

    # A class with one image
    folder = tmp_path / "classes"
    for label, count in (("mug", 5), ("lamp", 1)):
        (folder / label).mkdir(parents=True)
        for n in range(count):
            image = np.full((40, 40, 3), 40 * n + 20, np.uint8)
            image[5 + n :, 10:20] = 255 - 40 * n
            cv2.imwrite(str(folder / label / f"{n}.png"), image)
    one = _cli(env, "label", "import-folder", str(folder), "--dataset", "home")
    assert one.exit_code == 2 and "lamp" in one.output, one.output
    assert not dataset_dir(datasets, "home").exists()

    # A corrupt image in a dataset: training stops with the file's name
    corrupt = dataset_dir(datasets, "fm-corrupt")
    fetch(datasets, Settings().cache_dir, "fm-corrupt", **FASHION_SIZES)
    victim = sorted((corrupt / "images" / "train").iterdir())[0]
    victim.write_bytes(b"\x89PNG but not really")
    failed = _cli(env, "train", "--dataset", "fm-corrupt", "--model", "garments")
    assert failed.exit_code == 2, failed.output
    assert victim.name in failed.output, failed.output

    assert _tree(registry_root) == before
