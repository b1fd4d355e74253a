"""`camstream cameras add|list|remove` against a real (SQLite) Feast store: what the
worker's enrichment reads changes at once, without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from camstream.cameras import load_cameras
from camstream.cli import app
from camstream.featurestore import apply_repo, camera_features, prepare_repo

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runner swaps stderr per call and closes it after: loggers the CLI
    configured on it would outlive it and break later tests' logging."""
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *a, **k: None)


def test_cameras_add_list_remove_change_what_enrichment_reads(tmp_path: Path) -> None:
    # Given an applied feature repo
    repo = prepare_repo(tmp_path / "feast")
    store = apply_repo(repo)
    env = {"CAMSTREAM_FEAST_REPO": str(repo), "CAMSTREAM_STATE_DIR": str(tmp_path)}
    runner = CliRunner()
    cameras_file = tmp_path / "cameras.yaml"

    # When two cameras are added (one also to a cameras file)
    for args in (
        ["lobby", "--source", "rtsp://cam/lobby", "--site", "hq", "--zone", "entrance"],
        ["yard", "--indoor", "--threshold", "0.5"],
    ):
        result = runner.invoke(app, ["cameras", "add", *args, "--file", str(cameras_file)], env=env)
        assert result.exit_code == 0, result.output

    # Then enrichment reads their metadata, list shows them, the file holds them
    features = camera_features(store, ["lobby", "yard"])
    assert features["lobby"]["zone"] == "entrance" and features["lobby"]["site"] == "hq"
    assert features["yard"]["indoor"] is True
    assert features["yard"]["confidence_threshold"] == pytest.approx(0.5)
    listed = runner.invoke(app, ["cameras", "list", "--json"], env=env)
    assert [row["camera_id"] for row in json.loads(listed.output)] == ["lobby", "yard"]
    assert [c.id for c in load_cameras(cameras_file)] == ["lobby", "yard"]

    # When one is removed
    remove = ["cameras", "remove", "lobby", "--file", str(cameras_file)]
    result = runner.invoke(app, remove, env=env)
    assert result.exit_code == 0, result.output

    # Then enrichment sees it as unknown at once, and the rest stays
    features = camera_features(store, ["lobby", "yard"])
    assert all(value is None for value in features["lobby"].values())
    assert features["yard"]["indoor"] is True
    listed = runner.invoke(app, ["cameras", "list", "--json"], env=env)
    assert [row["camera_id"] for row in json.loads(listed.output)] == ["yard"]
    assert [c.id for c in load_cameras(cameras_file)] == ["yard"]


def test_cameras_add_with_a_bad_value_names_the_camera_and_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["cameras", "add", "lobby", "--threshold", "3"],
        env={"CAMSTREAM_FEAST_REPO": str(tmp_path / "none")},
    )
    assert result.exit_code == 2
    assert "camera lobby" in result.output
    assert "set confidence_threshold between 0 and 1" in result.output
