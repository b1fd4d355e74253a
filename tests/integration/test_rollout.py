"""Live rollouts on a real local stack (Kafka, Triton, Feast, a Faust worker) through
the `camstream` program.

The module starts its own stack on a model repository in a temporary folder (the
pretrained ImageNet model copied in, the workers' default model), so promotes never
touch the source tree's triton_repo that the session stack serves. Cameras publish
real frames through Kafka; the worker answers them; the tests count every frame's
prediction and read the version that made it. Where only Triton matters (the faulty
versions, the watch), a client thread stands in for a camera, classifying a frame
every 50 ms pinned to the version serving.json names, as the worker pins requests.

One trained model and its variants serve the whole module, and the tests run in file
order on that one repository, each stating what it starts from: fashion:1 (the seed
promote) -> 2 (promote) -> 1 (rollback), under load -> broken 4 and altered 5 refused
-> 2 rolled back by the watch -> two promotes at once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from confluent_kafka import Message
from typer.testing import CliRunner, Result

from camstream import featurestore, modelrepo
from camstream.cameras import CameraSpec
from camstream.cli import app
from camstream.datasets import Dataset, DatasetInfo, LabelSource, Split, dataset_dir, sha256_file
from camstream.datasets import Record as DatasetRecord
from camstream.imaging import to_model_input
from camstream.registry import Registry
from camstream.rollout import HISTORY_FILE, read_records
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.local import LocalStack
from camstream.stack.setup import CONVEYOR_TRUTH, ensure_conveyor, prepare
from tests.support.models import (
    FASHION_MODEL,
    register_altered_preprocessing,
    register_broken_onnx,
    register_copy,
    train_fashion,
)
from tests.support.stack import (
    Feed,
    Stack,
    metric_sum,
    prediction_counts,
    predictions_of,
    schema_validator,
)

pytestmark = pytest.mark.integration

MODEL = FASHION_MODEL
IMAGENET = "efficientnet_lite0"  # the workers' default model
# belt-a follows the model's default, belt-b is pinned to a version, street names no
# model (the workers' default model, the pretrained ImageNet one, throughout).
CAMERAS = (
    CameraSpec(id="belt-a", source="synthetic", model=MODEL),
    CameraSpec(id="belt-b", source="synthetic", model=MODEL, model_version="1"),
    CameraSpec(id="street", source="synthetic"),
)
SHADOW_WINDOW_PAIRS = 3  # small windows: several summaries within the test's seconds
TTL_S = 0.5  # the drain then waits 2 * 0.5 + 2 = 3 s of quiet


@pytest.fixture(autouse=True, scope="module")
def _quiet_logging() -> Iterator[None]:
    # CliRunner closes the stderr it lends; loggers must not keep it past the call.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("camstream.observability.configure_logging", lambda *_a, **_k: None)
        yield


@dataclass
class World:
    env: dict[str, str]
    repo: Path
    registry: Registry
    feast: Path
    stack: Stack
    local: LocalStack
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def grpc(self) -> str:
        return self.stack.info.triton_grpc

    @property
    def history(self) -> list[dict[str, Any]]:
        return read_records(self.registry.root / HISTORY_FILE)

    def routes(self) -> dict[str, tuple[str, str]]:
        rows = featurestore.registered_cameras(self.feast)
        return {r["camera_id"]: (r["model"], r["model_version"]) for r in rows}

    def ready(self, model: str = MODEL) -> list[int]:
        with grpcclient.InferenceServerClient(self.grpc) as client:
            index = client.get_model_repository_index(as_json=True)
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m["name"] == model and m.get("state") == "READY"
        )


def _cli(env: dict[str, str], *args: str) -> tuple[Result, float]:
    started = time.monotonic()
    result = CliRunner().invoke(app, list(args), env=env)
    return result, time.monotonic() - started


def _ok(result: Result) -> str:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """fashion trained once (1), re-registered as good copies (2, 3), a broken ONNX (4)
    and an altered preprocessing (5); a local stack whose Triton serves a repository
    holding only the ImageNet model; three cameras in its Feast repo; then fashion:1
    promoted live as the seed."""
    root = tmp_path_factory.mktemp("rollout")
    registry = Registry(root / "registry")
    trained = train_fashion(registry.root, root / "datasets", root / "work", model=MODEL)
    versions = {
        "trained": trained.number,
        "copy": register_copy(registry, trained, "retrained").number,
        "copy2": register_copy(registry, trained, "retrained again").number,
        "broken": register_broken_onnx(registry, trained).number,
        "altered": register_altered_preprocessing(registry, trained, root / "work").number,
    }
    assert list(versions.values()) == [1, 2, 3, 4, 5]
    # The source tree's repository, exported and profiled as the session stack's is;
    # then its ImageNet model copied into this module's own repository.
    prepared = prepare(Settings(state_dir=root / "state"))
    repo = root / "triton_repo"
    repo.mkdir()
    shutil.copytree(
        REPO_ROOT / "triton_repo" / IMAGENET,
        repo / IMAGENET,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    settings = Settings(
        state_dir=root / "state",
        model_repo=repo,
        model_name=IMAGENET,
        feature_cache_ttl_s=TTL_S,
        shadow_window_pairs=SHADOW_WINDOW_PAIRS,
        datasets_dir=root / "datasets",
        registry_dir=registry.root,
    )
    local = LocalStack(settings)
    try:
        info = local.start()
        feast = Path(info.feast_repo)
        featurestore.upsert_cameras(featurestore.open_store(feast), list(CAMERAS))
        env = {
            "CAMSTREAM_STATE_DIR": str(root / "state"),
            "CAMSTREAM_DATASETS_DIR": str(root / "datasets"),
            "CAMSTREAM_REGISTRY_DIR": str(registry.root),
            "CAMSTREAM_MODEL_REPO": str(repo),
            "CAMSTREAM_FEAST_REPO": str(feast),
            "CAMSTREAM_MODEL_NAME": IMAGENET,
            "CAMSTREAM_FEATURE_CACHE_TTL_S": str(TTL_S),
            "CAMSTREAM_TRITON_GRPC": info.triton_grpc,
        }
        seed, _ = _cli(env, "promote", f"{MODEL}:1", "--watch-s", "0")
        assert "passed the gate against no champion" in _ok(seed)
        stack = Stack(info, settings, prepared.assets, local)
        yield World(env, repo, registry, feast, stack, local, versions)
    finally:
        local.stop()


@dataclass
class Traffic:
    """A camera stand-in: one frame every 50 ms, pinned to the model's default version
    read from serving.json before each request, and the ready versions seen."""

    address: str
    repo: Path
    image: np.ndarray
    sent: list[tuple[float, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ready_seen: list[frozenset[int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.address) as client:
            while not self.stop.wait(0.05):
                version = modelrepo.default_version(self.repo, MODEL)
                tensor = grpcclient.InferInput(modelrepo.IMAGE, [1, 224, 224, 3], "UINT8")
                tensor.set_data_from_numpy(self.image[None])
                try:
                    client.infer(MODEL, [tensor], model_version=str(version))
                    self.sent.append((time.monotonic(), int(version or 0)))
                except Exception as exc:
                    self.failed.append(f"{MODEL}:{version}: {exc}")
                index = client.get_model_repository_index(as_json=True)
                self.ready_seen.append(
                    frozenset(
                        int(m["version"])
                        for m in index.get("models", [])
                        if m["name"] == MODEL and m.get("state") == "READY"
                    )
                )


@pytest.fixture
def traffic(world: World) -> Iterator[Traffic]:
    photo = np.full((280, 280, 3), 90, np.uint8)
    photo[60:220, 100:180] = 200
    load = Traffic(world.grpc, world.repo, to_model_input(photo))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(10)
    assert load.sent, "the stand-in camera sent nothing"


def _consistent(world: World, default: int) -> None:
    """Triton's ready versions, config.pbtxt's policy, serving.json, Feast and the
    registry tell the same story; the ImageNet model serves on, untouched."""
    routes = world.routes()
    in_use = {default} | {int(v) for m, v in routes.values() if m == MODEL and v}
    assert modelrepo.default_version(world.repo, MODEL) == default
    assert modelrepo.version_policy(world.repo, MODEL) == sorted(in_use)
    assert world.ready() == sorted(in_use)
    assert world.registry.aliases(MODEL)["champion"] == default
    assert world.ready(IMAGENET) == [1]


def _runs(predictions: list[dict[str, Any]], camera: str) -> list[tuple[str, int]]:
    """``camera``'s predictions in seq order as runs of one model version: each run's
    "MODEL:VERSION" and its first seq (the switch points)."""
    runs: list[tuple[str, int]] = []
    for p in sorted((p for p in predictions if p["camera_id"] == camera), key=lambda p: p["seq"]):
        made_by = f"{p['model']['name']}:{p['model']['version']}"
        if not runs or runs[-1][0] != made_by:
            runs.append((made_by, p["seq"]))
    return runs


def test_promote_then_rollback_under_load_every_frame_answered_by_a_named_version(
    world: World, record_property: Any
) -> None:
    # Given fashion:1 serving the belts (belt-b pinned to it), ImageNet the street, and
    # the three cameras publishing through Kafka to the worker
    assert world.ready() == [1] and world.routes()["belt-b"] == (MODEL, "1")
    cameras = [c.id for c in CAMERAS]
    worker = world.local.worker_metrics
    failures_before = metric_sum(worker(), "camstream_worker_triton_failures_total")
    dlq_before = metric_sum(worker(), "camstream_worker_dlq_total")
    with Feed(world.stack, cameras, fps=4) as feed:
        time.sleep(2)
        # When version 2 (the same network, retrained) is promoted for the whole model
        result, promote_s = _cli(
            world.env, "promote", f"{MODEL}:2", "--force", "--reason", "retrained", "--watch-s", "2"
        )
        output = _ok(result)
        print(f"\npromote {MODEL}:2 took {promote_s:.1f} s:\n{output}")
        promoted = world.history[-1]
        routes_promoted = world.routes()
        _consistent(world, 2)
        time.sleep(1)
        # ...and then rolled back
        result, rollback_s = _cli(world.env, "rollback", MODEL)
        back = _ok(result)
        print(f"\nrollback {MODEL} took {rollback_s:.1f} s:\n{back}")
        rolled = world.history[-1]
        time.sleep(2)
    predictions = predictions_of(world.stack, set(cameras), feed.delivered)
    counts = prediction_counts(predictions)

    # Then the promote loaded 2 beside 1, passed the canary, switched the default and
    # re-pinned belt-b in Feast and serving.json, and drained 1 before dropping it
    assert f"load     {MODEL} versions [1, 2] (serving [1])" in output
    assert (promoted["action"], promoted["version"]) == ("promote", 2)
    assert promoted["canary"]["n"] == 32 and promoted["canary"]["mismatches"] == 0
    assert routes_promoted == {"belt-a": (MODEL, ""), "belt-b": (MODEL, "2"), "street": ("", "")}
    assert promoted["switched"] == ["belt-a", "belt-b"]
    assert promoted["previous"] == {"belt-b": f"{MODEL}:1", "default": 1}
    assert promoted["timings_s"]["drain"] >= 2 * TTL_S + 2
    # And the rollback put 1 back, belt-b's pin and the champion included, in seconds
    assert (rolled["action"], rolled["version"]) == ("rollback", 1)
    assert world.routes()["belt-b"] == (MODEL, "1")
    _consistent(world, 1)
    assert "cameras switched: belt-a, belt-b" in back
    assert rollback_s < 60 and rolled["timings_s"]["to_switched"] < 30, rolled["timings_s"]
    # And every frame published has a prediction, no request failed, none went to the DLQ
    missing = sorted(feed.delivered - set(counts))
    failed = metric_sum(worker(), "camstream_worker_triton_failures_total") - failures_before
    dlq = metric_sum(worker(), "camstream_worker_dlq_total") - dlq_before
    switches = {camera: _runs(predictions, camera) for camera in cameras}
    print(f"frames {len(feed.delivered)}, missing {len(missing)}, failed {failed}, dlq {dlq}")
    print(f"switch points (version, first seq): {switches}")
    for name, value in {
        "frames": len(feed.delivered),
        "frames_missing": len(missing),
        "failed_requests": failed,
        "dlq": dlq,
        "promote_s": round(promote_s, 1),
        "promote_to_switched_s": promoted["timings_s"]["to_switched"],
        "rollback_s": round(rollback_s, 1),
        "rollback_to_switched_s": rolled["timings_s"]["to_switched"],
    }.items():
        record_property(name, value)
    assert len(feed.delivered) > 3 * 4 * 10
    assert missing == [] and failed == 0 and dlq == 0
    # And each prediction names the version that made it: the belts 1, then 2, then 1
    # again, each switch once and in seq order; the street ImageNet throughout
    for belt in ("belt-a", "belt-b"):
        assert [v for v, _ in switches[belt]] == [f"{MODEL}:1", f"{MODEL}:2", f"{MODEL}:1"]
    assert [v for v, _ in switches["street"]] == [f"{IMAGENET}:1"]


@pytest.mark.parametrize(("variant", "step"), [("broken", "load"), ("altered", "canary")])
def test_a_faulty_version_is_refused_and_the_old_one_keeps_serving(
    world: World, traffic: Traffic, variant: str, step: str
) -> None:
    # Given fashion:1 serving
    _consistent(world, 1)
    number = world.versions[variant]
    before = {p.name: p.read_bytes() for p in (world.repo / MODEL).iterdir() if p.is_file()}
    # When the faulty version is promoted (past the gate)
    result, took = _cli(
        world.env, "promote", f"{MODEL}:{number}", "--force", "--reason", variant, "--watch-s", "0"
    )
    print(f"\npromote {MODEL}:{number} ({variant}) took {took:.1f} s:\n{result.output}")
    # Then it is refused at its step, with the reason, and exit 1
    assert result.exit_code == 1, result.output
    assert f"refused: {MODEL}:{number}" in result.output and f"{MODEL}:1 is still" in result.output
    record = world.history[-1]
    assert (record["action"], record["version"]) == ("refused", number)
    assert record["reason"].startswith(f"{step}:"), record["reason"]
    if step == "canary":
        assert record["canary"]["n"] == 32 and record["canary"]["mismatches"] > 0
        assert "failed the canary" in result.output
    refusal = world.registry.history(MODEL)[-1]
    assert (refusal["event"], refusal["candidate"]) == ("refused", number)
    assert refusal["reason"].startswith(step)
    # And version 1 still serves, alone, and the repository is as it was
    _consistent(world, 1)
    assert modelrepo.model_versions(world.repo / MODEL) == (1, 2)
    after = {p.name: p.read_bytes() for p in (world.repo / MODEL).iterdir() if p.is_file()}
    assert after == before
    assert traffic.failed == []


def test_the_watch_rolls_a_version_back_by_itself(world: World, traffic: Traffic) -> None:
    # Given fashion:1 serving
    _consistent(world, 1)
    # When 2 is promoted with a latency limit no request can meet
    result, took = _cli(
        world.env,
        "promote",
        f"{MODEL}:2",
        "--force",
        "--reason",
        "watch",
        "--watch-s",
        "20",
        "--max-latency-ms",
        "0.001",
    )
    print(f"\npromote {MODEL}:2 with a watch took {took:.1f} s:\n{result.output}")
    # Then the watch sees the camera's requests on 2, rolls back, and says why
    assert result.exit_code == 1, result.output
    record = world.history[-1]
    assert record["action"] == "auto_rollback"
    assert record["reason"].startswith("watch: mean request latency"), record["reason"]
    assert world.registry.history(MODEL)[-1]["event"] == "refused"
    _consistent(world, 1)
    assert world.routes()["belt-b"] == (MODEL, "1")
    assert traffic.failed == []
    assert 2 in {v for _, v in traffic.sent}


def test_shadow_start_loads_the_candidate_beside_and_stop_drops_it(world: World) -> None:
    # Given fashion:1 serving and version 2 installed but not loaded
    _consistent(world, 1)
    assert world.ready() == [1]
    env = world.env
    # When fashion:2 shadows belt-a on every frame while it publishes
    with Feed(world.stack, ["belt-a"], fps=4):
        started, _ = _cli(
            env, "shadow", "start", f"{MODEL}:2", "--camera", "belt-a", "--fraction", "1"
        )
        print(f"\nshadow start:\n{_ok(started)}")
        # Then 2 is loaded beside 1 and belt-a names it in Feast; status says so
        assert world.ready() == [1, 2]
        (row,) = [
            r for r in featurestore.registered_cameras(world.feast) if r["camera_id"] == "belt-a"
        ]
        assert (row["shadow_model"], row["shadow_fraction"]) == (f"{MODEL}:2", 1.0)
        status, _ = _cli(env, "shadow", "status")
        assert f"belt-a: shadow {MODEL}:2 x1.00 beside {MODEL}:1 (ready)" in _ok(status)
        time.sleep(3)

    # And the worker published champion/candidate pairs for belt-a's frames, and window
    # summaries whose every figure a recount from the window's pairs gives again
    def of_kind(messages: list[Message], kind: str) -> list[dict[str, Any]]:
        records = [json.loads(m.value() or b"{}") for m in messages]
        return [r for r in records if r.get("kind") == kind]

    def summed_up(messages: list[Message]) -> bool:
        pairs, summaries = of_kind(messages, "pair"), of_kind(messages, "summary")
        return bool(summaries) and all(
            sum(p["window"] == s["window"] for p in pairs) == s["pairs"] for s in summaries
        )

    topic = world.stack.settings.shadow_topic
    messages = world.stack.collect(topic, summed_up, 30, {"belt-a"})
    pairs, summaries = of_kind(messages, "pair"), of_kind(messages, "summary")
    assert len(pairs) >= SHADOW_WINDOW_PAIRS
    validator = schema_validator("shadow.schema.json")
    for record in pairs + summaries:
        validator.validate(record)
    assert {(p["champion"]["version"], p["candidate"]["version"]) for p in pairs} == {("1", "2")}
    assert any(s["pairs"] for s in summaries)
    for summary in summaries:
        window = [p for p in pairs if p["window"] == summary["window"]]
        assert summary["pairs"] == len(window)
        if not window:  # a window of failures only
            assert summary["agreement_rate"] is None
            continue
        assert summary["agreement_rate"] == pytest.approx(
            sum(p["agree"] for p in window) / len(window)
        )
        shift = [p["candidate_score"] - p["champion_score"] for p in window]
        assert summary["confidence_shift"] == pytest.approx(sum(shift) / len(shift), abs=1e-6)
        confusion = Counter((p["champion_label"], p["candidate_label"]) for p in window)
        assert {
            (c["champion_label"], c["candidate_label"]): c["count"] for c in summary["confusion"]
        } == dict(confusion)
    # When the shadow stops, 2 is drained and dropped; what serves is as before
    stopped, _ = _cli(env, "shadow", "stop", f"{MODEL}:2", "--camera", "belt-a")
    print(f"\nshadow stop:\n{_ok(stopped)}")
    assert world.ready() == [1]
    (row,) = [r for r in featurestore.registered_cameras(world.feast) if r["camera_id"] == "belt-a"]
    assert row["shadow_model"] == "" and row["shadow_fraction"] == 0.0
    assert "no camera is shadowed" in _ok(_cli(env, "shadow", "status")[0])
    _consistent(world, 1)


def test_two_promotes_at_once_one_is_refused_and_all_agree_after(world: World) -> None:
    # Given fashion:1 serving
    _consistent(world, 1)
    env = {**os.environ, **world.env, "CAMSTREAM_LOG_LEVEL": "WARNING"}
    camstream = str(Path(sys.executable).parent / "camstream")
    commands = [
        [camstream, "promote", f"{MODEL}:2", "--force", "--reason", "a", "--watch-s", "0"],
        [camstream, "promote", f"{MODEL}:3", "--force", "--reason", "b", "--watch-s", "0"],
    ]
    # When both are started at once
    runs = [
        subprocess.Popen(
            c, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    codes = [run.returncode for run in runs]
    print("\n" + "\n---\n".join(outputs))
    # Then one went live and the other was refused, naming the one running
    assert sorted(codes) == [0, 1], outputs
    winner = 2 if codes[0] == 0 else 3
    loser, loser_run = (3, runs[1]) if winner == 2 else (2, runs[0])
    refused = outputs[codes.index(1)]
    assert "another rollout is running" in refused, refused
    assert f"pid {runs[codes.index(0)].pid}" in refused and f"{MODEL}:{winner}" in refused
    assert loser_run.returncode == 1
    last = world.history[-2:]
    assert {(r["action"], r["version"]) for r in last} == {("promote", winner), ("refused", loser)}
    history = world.registry.history(MODEL)
    assert (history[-1]["event"], history[-1]["to"]) == ("alias", winner)
    lock_refusal = next(h for h in reversed(history) if h["event"] == "refused")
    assert lock_refusal["candidate"] == loser and lock_refusal["reason"].startswith("lock:")
    # And Triton, config.pbtxt, serving.json, Feast and the registry agree on the winner
    _consistent(world, winner)
    assert json.loads(modelrepo.serving_path(world.repo, MODEL).read_text()) == {"version": winner}


def _conveyor_dataset(datasets_dir: Path, folder: Path) -> tuple[Dataset, list[tuple[str, str]]]:
    """The conveyor camera's images as a dataset (all of them its test split, labelled
    by their ground truth), and (file, label) in the order the camera sends them."""
    with (folder / CONVEYOR_TRUTH).open(newline="") as handle:
        rows = [(row["file"], row["label"]) for row in csv.DictReader(handle)]
    root = dataset_dir(datasets_dir, "conveyor")
    dataset = Dataset.create(root, DatasetInfo("conveyor", "import", int(time.time() * 1000)))
    (root / "images").mkdir(parents=True)
    for name, label in rows:
        shutil.copyfile(folder / name, root / "images" / name)
        dataset.records.append(
            DatasetRecord(
                path=f"images/{name}",
                sha256=sha256_file(root / "images" / name),
                label=label,
                label_source=LabelSource.DATASET,
                split=Split.TEST,
            )
        )
    dataset.save()
    return dataset, rows


def test_the_conveyor_promoted_to_fashion_classifies_live_as_its_offline_evaluation(
    world: World, record_property: Any
) -> None:
    # Given the conveyor camera (Fashion-MNIST products) on the pretrained ImageNet model
    # beside the street camera, and the fashion champion
    champion = world.registry.aliases(MODEL)["champion"]
    featurestore.upsert_cameras(
        featurestore.open_store(world.feast), [CameraSpec(id="cam-conveyor", source="synthetic")]
    )
    folder = ensure_conveyor(Settings().cache_dir)
    dataset, rows = _conveyor_dataset(Path(world.env["CAMSTREAM_DATASETS_DIR"]), folder)
    jpegs = [(folder / name).read_bytes() for name, _label in rows]
    producer = world.stack.producer()

    def send(camera: str, seqs: range) -> None:
        """The conveyor's images in order from the first seq (image i at seqs[i])."""
        for i, seq in enumerate(seqs):
            world.stack.publish(producer, camera, seq, jpegs[i % len(jpegs)], 224, 224)
        producer.flush(30)

    before = range(1, 31)
    send("cam-conveyor", before)
    on_imagenet = predictions_of(
        world.stack, {"cam-conveyor"}, {("cam-conveyor", s) for s in before}
    )
    assert {p["model"]["name"] for p in on_imagenet} == {IMAGENET}

    # When it is promoted to the fashion champion, that camera only
    result, _ = _cli(
        world.env, "promote", f"{MODEL}:{champion}", "--camera", "cam-conveyor",
        "--force", "--reason", "conveyor", "--watch-s", "0",
    )  # fmt: skip
    _ok(result)
    assert world.routes()["cam-conveyor"] == (MODEL, str(champion))
    # and every conveyor image passes once, with street frames between
    after = range(1001, 1001 + len(rows))
    send("cam-conveyor", after)
    send("street", range(5001, 5021))
    live = predictions_of(world.stack, {"cam-conveyor"}, {("cam-conveyor", s) for s in after})
    live = [p for p in live if p["seq"] in after]
    street = predictions_of(world.stack, {"street"}, {("street", s) for s in range(5001, 5021)})

    # Then the conveyor was answered by the fashion version, the street by ImageNet
    assert {(p["model"]["name"], p["model"]["version"]) for p in live} == {(MODEL, str(champion))}
    assert {p["model"]["name"] for p in street if p["seq"] > 5000} == {IMAGENET}
    # and its live accuracy is within 2 points of the version's offline evaluation of the
    # same images, image by image nearly always the same top-1 (no training-serving skew)
    truth = {seq: label for seq, (_name, label) in zip(after, rows, strict=True)}
    top1 = {p["seq"]: p["top_k"][0]["label"] for p in live}
    live_accuracy = sum(top1[s] == truth[s] for s in after) / len(rows)
    evaluated, _ = _cli(
        world.env, "evaluate", "--model", f"{MODEL}:{champion}", "--dataset", dataset.name
    )
    report_path = Path(_ok(evaluated).strip().splitlines()[-1])
    report = json.loads(report_path.read_text())
    offline = {
        json.loads(line)["path"]: json.loads(line)["pred"]
        for line in (report_path.parent / "predictions.jsonl").read_text().splitlines()
    }
    same = sum(
        top1[seq] == offline[f"images/{name}"] for seq, (name, _l) in zip(after, rows, strict=True)
    )
    record_property("conveyor_live_accuracy", round(live_accuracy, 4))
    record_property("conveyor_offline_accuracy", report["accuracy"])
    print(
        f"conveyor: live accuracy {live_accuracy:.3f}, offline {report['accuracy']:.3f} "
        f"on the same {len(rows)} images; same top-1 {same}/{len(rows)}"
    )
    assert report["n"] == len(rows)
    assert abs(live_accuracy - report["accuracy"]) <= 0.02
    assert same >= 0.98 * len(rows)


SHADOW_P99_RATIO_BOUND = 2.0  # champion p99 with a shadow on every frame / shadow off


def test_bench_rollout_loses_no_frame_and_the_shadow_costs_the_champion_little(
    world: World, record_property: Any
) -> None:
    # Given the fashion champion serving and another good version of it
    champion = world.registry.aliases(MODEL)["champion"]
    other = next(n for n in (world.versions["copy"], world.versions["copy2"]) if n != champion)
    # When `camstream bench rollout` promotes it, rolls it back, then shadows belt-a
    # with it, all under a steady load on two cameras
    result, took_s = _cli(
        world.env, "bench", "rollout", f"{MODEL}:{other}",
        "--camera", "belt-a", "--camera", "street", "--shadow-s", "6", "--json",
    )  # fmt: skip
    figures = json.loads(_ok(result).strip().splitlines()[-1])
    print(f"\nbench rollout ({took_s:.0f} s): {figures}")
    for name in ("frames", "missing", "failed_requests", "dlq", "shadow_p99_ratio"):
        record_property(f"bench_{name}", figures[name])
    # Then every frame came back, no request failed, none went to the DLQ
    assert figures["frames"] > 2 * 4 * 10
    assert (figures["missing"], figures["failed_requests"], figures["dlq"]) == (0, 0, 0)
    # and both switches were timed, and the champion's p99 with the candidate
    # classifying every one of its frames stayed within the bound of shadow off
    assert figures["promote_to_switched_s"] and figures["rollback_to_switched_s"]
    assert figures["shadow_off_p99_ms"] and figures["shadow_on_p99_ms"]
    assert figures["shadow_p99_ratio"] <= SHADOW_P99_RATIO_BOUND, figures
    # and the stack is back where it was
    _consistent(world, champion)
