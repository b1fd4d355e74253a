"""camstream.rollout's plan and verdicts: versions in use, what a switch changes, what a
rollback undoes, the canary comparison, the drain and the watch; plus the lock and the
repository snapshot, on real files."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camstream import modelrepo
from camstream.errors import ConfigError
from camstream.rollout import (
    Fleet,
    Quiet,
    RepoSnapshot,
    RolloutRefused,
    Route,
    Switch,
    VersionStats,
    WatchLimits,
    compare_canary,
    leaving,
    pick_canary,
    pin_serving,
    plan_promote,
    previous_of,
    rollback_target,
    rollout_lock,
    switched_cameras,
    undo_switch,
    watch_verdict,
)

DEFAULT_MODEL = "efficientnet_lite0"


def _fleet(**routes: tuple[str, str]) -> Fleet:
    """Cameras routed as given; efficientnet_lite0's default is 1, fashion's 2."""
    return Fleet(
        {c: Route(*r) for c, r in routes.items()},
        {DEFAULT_MODEL: 1, "fashion": 2},
        DEFAULT_MODEL,
    )


def test_in_use_counts_routes_shadows_and_every_models_default() -> None:
    # Given a street camera on the default model, a conveyor on fashion's default and
    # one pinned to fashion 3, and a shadow of fashion 4 on the street camera
    rows: list[dict[str, Any]] = [
        {
            "camera_id": "street",
            "model": "",
            "model_version": "",
            "shadow_model": "fashion:4",
            "shadow_fraction": 0.2,
        },
        {"camera_id": "belt-1", "model": "fashion", "model_version": ""},
        {"camera_id": "belt-2", "model": "fashion", "model_version": "3"},
        {"camera_id": "old-row"},  # written before the routing columns existed
    ]
    fleet = Fleet.from_rows(rows, {DEFAULT_MODEL: 1, "fashion": 2}, DEFAULT_MODEL)
    # Then each camera resolves to a model and version, and all of them are in use
    assert fleet.resolve("street") == (DEFAULT_MODEL, 1)
    assert fleet.resolve("old-row") == (DEFAULT_MODEL, 1)
    assert fleet.resolve("belt-1") == ("fashion", 2)
    assert fleet.resolve("belt-2") == ("fashion", 3)
    assert fleet.in_use() == {DEFAULT_MODEL: {1}, "fashion": {2, 3, 4}}
    assert fleet.routed_models() == {DEFAULT_MODEL, "fashion"}


def test_a_shadow_with_no_fraction_is_not_in_use() -> None:
    rows = [{"camera_id": "c", "shadow_model": "fashion:4", "shadow_fraction": 0.0}]
    fleet = Fleet.from_rows(rows, {DEFAULT_MODEL: 1}, DEFAULT_MODEL)
    assert fleet.in_use() == {DEFAULT_MODEL: {1}}


def test_a_whole_model_promote_moves_the_default_and_repins_other_versions() -> None:
    # Given cameras following fashion's default (2), pinned to 1 and to 3, and one on
    # the default model
    before = _fleet(a=("fashion", ""), b=("fashion", "1"), c=("fashion", "3"), s=("", ""))
    # When fashion 3 is promoted for the whole model
    switch = plan_promote(before, "fashion", 3, None)
    after = before.apply(switch)
    # Then the default moves to 3 and only b is re-pinned (c already names 3)
    assert switch == Switch("fashion", 3, {"b": Route("fashion", "3")})
    assert switched_cameras(before, after) == ["a", "b"]
    assert after.in_use() == {DEFAULT_MODEL: {1}, "fashion": {3}}
    # And the drain waits for the versions nobody uses any more
    assert leaving(before, after) == {"fashion": [1, 2]}
    assert previous_of(before, switch) == {"b": "fashion:1", "default": 2}


def test_a_camera_promote_pins_only_those_cameras() -> None:
    before = _fleet(street=("", ""), belt=("", ""))
    switch = plan_promote(before, "fashion", 2, ["belt"])
    after = before.apply(switch)
    assert switch == Switch("fashion", None, {"belt": Route("fashion", "2")})
    assert switched_cameras(before, after) == ["belt"]
    # the default model's version stays in use by the street camera (and as a default)
    assert leaving(before, after) == {}
    assert after.routed_models() == {DEFAULT_MODEL, "fashion"}


def test_promoting_to_an_unregistered_camera_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"camera\(s\) nope are not registered .*street"):
        plan_promote(_fleet(street=("", "")), "fashion", 2, ["nope"])


def test_undo_switch_puts_back_raw_routes_and_the_old_default() -> None:
    before = _fleet(a=("", ""), b=("fashion", "1"))
    promote_all = plan_promote(before, "fashion", 3, None)
    assert undo_switch(before, promote_all) == Switch("fashion", 2, {"b": Route("fashion", "1")})
    promote_a = plan_promote(before, "fashion", 3, ["a"])
    undo = undo_switch(before, promote_a)
    assert undo == Switch("fashion", None, {"a": Route("", "")})  # not pinned to what it was
    assert before.apply(promote_a).apply(undo) == before


def _promote(
    rid: str, version: int, default: int | None, routes: dict[str, dict[str, str]], cams: Any
) -> dict[str, Any]:
    return {
        "id": rid,
        "action": "promote",
        "model": "fashion",
        "version": version,
        "cameras": cams,
        "undo": {"default": default, "routes": routes},
    }


def test_rollback_undoes_the_last_promote_not_yet_undone() -> None:
    # Given fashion promoted 1 -> 2 (whole model, re-pinning b), then 2 -> 3
    records = [
        _promote("p1", 2, 1, {"b": {"model": "fashion", "model_version": "1"}}, None),
        {"id": "r0", "action": "refused", "model": "fashion", "version": 9},
        _promote("p2", 3, 2, {}, None),
    ]
    # When rolled back, the last promote is undone: default back to 2
    target, switch = rollback_target(records, "fashion", None)
    assert target["id"] == "p2" and switch == Switch("fashion", 2, {})
    # And once that is recorded, the next rollback undoes the one before
    records.append(
        {"id": "r1", "action": "rollback", "model": "fashion", "undoes": "p2", "cameras": None}
    )
    target, switch = rollback_target(records, "fashion", None)
    assert target["id"] == "p1"
    assert switch == Switch("fashion", 1, {"b": Route("fashion", "1")})


def test_rollback_of_some_cameras_leaves_the_rest_of_the_promote() -> None:
    # Given one promote that pinned cameras a and b, from their defaults
    blank = {"model": "", "model_version": ""}
    records = [_promote("p1", 2, None, {"a": blank, "b": blank}, ["a", "b"])]
    # When camera a is rolled back, only a goes back
    _target, switch = rollback_target(records, "fashion", ["a"])
    assert switch == Switch("fashion", None, {"a": Route()})
    records.append(
        {"id": "r1", "action": "rollback", "model": "fashion", "undoes": "p1", "cameras": ["a"]}
    )
    # Then a has nothing left to roll back, and the model's rollback puts back b only
    with pytest.raises(ConfigError, match="no promote of fashion for camera"):
        rollback_target(records, "fashion", ["a"])
    assert rollback_target(records, "fashion", None)[1] == Switch("fashion", None, {"b": Route()})


def test_rollback_of_a_models_first_default_or_of_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match="first default version"):
        rollback_target([_promote("p1", 1, None, {}, None)], "fashion", None)
    with pytest.raises(ConfigError, match="no promote of fashion"):
        rollback_target([], "fashion", None)
    auto = {
        "id": "a1",
        "action": "auto_rollback",
        "model": "fashion",
        "undoes": "p1",
        "cameras": None,
    }
    with pytest.raises(ConfigError, match="no promote of fashion"):
        rollback_target([_promote("p1", 2, 1, {}, None), auto], "fashion", None)


def _rows(n: int) -> list[dict[str, Any]]:
    labels = ["bag", "coat", "shirt"]
    return [
        {"path": f"images/{i}.png", "truth": labels[i % 3], "pred": labels[i % 3], "score": 0.9}
        for i in range(n)
    ]


def test_pick_canary_takes_every_class_in_turn() -> None:
    rows = sorted(_rows(30), key=lambda r: str(r["truth"]))  # grouped by class
    picked = pick_canary(rows, limit=6)
    assert [r["truth"] for r in picked] == ["bag", "coat", "shirt"] * 2
    assert len(pick_canary(rows, limit=100)) == 30


def test_canary_passes_on_the_same_answers_and_names_each_mismatch() -> None:
    rows = _rows(3)
    labels = ["bag", "coat", "shirt"]
    same = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]], np.float32)
    assert compare_canary(rows, same, labels, 0.02).passed
    # a probability off by more than the tolerance, and another top-1
    skewed = same.copy()
    skewed[0] = [0.85, 0.1, 0.05]
    skewed[2] = [0.6, 0.05, 0.35]
    result = compare_canary(rows, skewed, labels, 0.02)
    assert not result.passed
    assert [(m["path"], m["got"]) for m in result.mismatches] == [
        ("images/0.png", "bag"),
        ("images/2.png", "bag"),
    ]
    assert result.figures()["mismatches"] == 2 and "live bag 0.600" in result.summary()
    assert not compare_canary([], np.zeros((0, 3), np.float32), labels, 0.02).passed


def test_drain_is_quiet_only_after_no_execution_for_the_quiet_time() -> None:
    quiet = Quiet(3.0, now=0.0, count=10)
    assert not quiet.observe(1.0, 11)  # a request in flight at the switch
    assert not quiet.observe(3.5, 11)
    assert quiet.observe(4.0, 11)
    assert not quiet.observe(4.5, 0)  # reloaded: counting starts again


def test_watch_rolls_back_on_error_rate_or_latency_only_past_the_limits() -> None:
    limits = WatchLimits(60, max_latency_ms=50, max_error_rate=0.01)
    start = VersionStats(executions=5, success=10, success_ns=10 * 5_000_000, fail=0)
    fine = VersionStats(50, 210, 210 * 5_000_000, 1)  # 1 failure in 201: 0.5%
    assert watch_verdict(start, fine, limits) is None
    failing = VersionStats(50, 30, 30 * 5_000_000, 2)
    assert "2 failed of 22 requests" in str(watch_verdict(start, failing, limits))
    slow = VersionStats(50, 20, 10 * 5_000_000 + 10 * 80_000_000, 0)
    assert "mean request latency 80.0 ms over 10 requests" in str(
        watch_verdict(start, slow, limits)
    )
    few = VersionStats(50, 12, 10 * 5_000_000 + 2 * 900_000_000, 0)  # 2 requests: no verdict
    assert watch_verdict(start, few, limits) is None
    stats = {
        "execution_count": "3",
        "inference_stats": {
            "success": {"count": "7", "ns": "70"},
            "fail": {"count": "1", "ns": "2"},
        },
    }
    assert VersionStats.from_json(stats) == VersionStats(3, 7, 70, 1)


def _hold_lock(repo: str, ready: Any, release: Any) -> None:
    with rollout_lock(Path(repo), 0, "camstream promote fashion:2"):
        ready.set()
        release.wait(10)


def test_a_second_rollout_is_refused_naming_the_running_one(tmp_path: Path) -> None:
    # Given another process holding the repository's rollout lock
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        # When this one asks for it, waiting a little, it is refused with the holder named
        started = time.monotonic()
        with pytest.raises(RolloutRefused) as refused, rollout_lock(tmp_path, 0.3, "me"):
            pass
        assert time.monotonic() - started >= 0.3
        assert f"pid {holder.pid}: camstream promote fashion:2" in str(refused.value)
        assert refused.value.reason.startswith("lock:")
    finally:
        release.set()
        holder.join(10)
    # Then, once released, it is free (and free again after use)
    with rollout_lock(tmp_path, 0, "me"):
        assert json.loads((tmp_path / ".rollout.lock").read_text())["command"] == "me"
    assert (tmp_path / ".rollout.lock").read_text() == ""


def _install(repo: Path, tmp_path: Path, number: int) -> None:
    source = tmp_path / f"src{number}"
    source.mkdir()
    files = {}
    for name in ("model.onnx", "labels.txt", "reference_profile.json", "model.py"):
        (source / name).write_text(f"{name} {number}\n")
        files[name] = source / name
    modelrepo.install_version(
        repo,
        "fashion",
        number,
        onnx=files["model.onnx"],
        labels=files["labels.txt"],
        profile=files["reference_profile.json"],
        model_py=files["model.py"],
    )


def test_pinning_then_a_refused_install_leaves_the_repository_as_it_was(tmp_path: Path) -> None:
    # Given a model serving version 1, with an implicit default and policy
    repo = tmp_path / "repo"
    _install(repo, tmp_path, 1)
    # When its serving state is pinned, then version 2 installed beside it
    pin_serving(repo, "fashion")
    assert modelrepo.default_version(repo, "fashion") == 1
    assert modelrepo.version_policy(repo, "fashion") == [1]
    files = {p.name: p.read_bytes() for p in (repo / "fashion").iterdir() if p.is_file()}
    snapshot = RepoSnapshot(repo, "fashion", 2)
    _install(repo, tmp_path, 2)
    modelrepo.set_version_policy(repo, "fashion", [1, 2])
    # Then the new folder changes neither the default nor the policy's versions on disk...
    assert modelrepo.default_version(repo, "fashion") == 1
    # ...and a refusal puts back every file, removing the version it installed
    snapshot.restore()
    assert modelrepo.model_versions(repo / "fashion") == (1,)
    after = {p.name: p.read_bytes() for p in (repo / "fashion").iterdir() if p.is_file()}
    assert after == files


def test_a_refused_first_version_of_a_new_model_leaves_no_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    snapshot = RepoSnapshot(repo, "fashion", 1)
    _install(repo, tmp_path, 1)
    snapshot.restore()
    assert modelrepo.list_models(repo) == []
