"""Camera routing in the real Feast store: which model and version answer for a camera,
changed at run time by `camstream cameras update` (and by promote, rollback, shadow)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from camstream.cameras import CameraSpec
from camstream.cli import app
from camstream.errors import ConfigError
from camstream.featurestore import (
    META_FILE,
    apply_repo,
    camera_features,
    prepare_repo,
    registered_cameras,
    update_cameras,
    upsert_cameras,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _quiet_cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's logging set-up would bind the runner's stderr, closed after each call.
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *_a, **_k: None)


def test_update_changes_only_the_given_routing_and_keeps_the_history(tmp_path: Path) -> None:
    # Given two registered cameras on the default model
    store = apply_repo(prepare_repo(tmp_path / "feast"))
    upsert_cameras(
        store,
        [
            CameraSpec(id="dock", source="synthetic", site="north", confidence_threshold=0.4),
            CameraSpec(id="gate", source="synthetic"),
        ],
    )
    assert camera_features(store, ["dock"])["dock"]["model"] == ""

    # When one is routed to version 3 of another model, with a shadow candidate
    update_cameras(
        store,
        {"dock": {"model": "fashion", "model_version": "3", "shadow_model": "fashion:4"}},
    )

    # Then the online store serves the new route at once and the rest of its metadata
    features = camera_features(store, ["dock", "gate"])
    assert features["dock"]["model"] == "fashion" and features["dock"]["model_version"] == "3"
    assert features["dock"]["shadow_model"] == "fashion:4"
    assert features["dock"]["site"] == "north"
    assert features["dock"]["confidence_threshold"] == pytest.approx(0.4)
    assert features["gate"]["model"] == "" and features["gate"]["model_version"] == ""
    # ...the listing shows each camera once, as it is now
    rows = {row["camera_id"]: row for row in registered_cameras(Path(store.repo_path))}
    assert sorted(rows) == ["dock", "gate"]
    assert (rows["dock"]["model"], rows["dock"]["model_version"]) == ("fashion", "3")
    # ...and the offline source keeps the earlier row for point-in-time reads
    offline = pd.read_parquet(Path(store.repo_path) / META_FILE)
    assert sorted(offline[offline["camera_id"] == "dock"]["model"]) == ["", "fashion"]


def test_update_refuses_unknown_cameras_and_bad_values_changing_nothing(tmp_path: Path) -> None:
    store = apply_repo(prepare_repo(tmp_path / "feast"))
    upsert_cameras(store, [CameraSpec(id="dock", source="synthetic")])
    before = (Path(store.repo_path) / META_FILE).read_bytes()

    with pytest.raises(ConfigError, match=r"\['ghost'\] are not registered"):
        update_cameras(store, {"dock": {"model": "m"}, "ghost": {"model": "m"}})
    with pytest.raises(ValueError, match="model_version is a positive integer"):
        update_cameras(store, {"dock": {"model_version": "v2"}})

    assert (Path(store.repo_path) / META_FILE).read_bytes() == before
    assert camera_features(store, ["dock"])["dock"]["model"] == ""


def test_cameras_update_cli_routes_and_list_shows_it(tmp_path: Path) -> None:
    repo = tmp_path / "feast"
    store = apply_repo(prepare_repo(repo))
    upsert_cameras(store, [CameraSpec(id="dock", source="synthetic")])
    env = {"CAMSTREAM_FEAST_REPO": str(repo), "CAMSTREAM_STATE_DIR": str(tmp_path)}
    runner = CliRunner()

    pinned = runner.invoke(
        app, ["cameras", "update", "dock", "--model", "fashion", "--model-version", "2"], env=env
    )
    assert pinned.exit_code == 0, pinned.output
    # a new model without a version drops the old model's pin
    moved = runner.invoke(app, ["cameras", "update", "dock", "--model", "other"], env=env)
    assert moved.exit_code == 0, moved.output
    listed = runner.invoke(app, ["cameras", "list", "--json"], env=env)
    (row,) = json.loads(listed.stdout.strip().splitlines()[-1])
    assert (row["model"], row["model_version"]) == ("other", "")

    missing = runner.invoke(app, ["cameras", "update", "ghost", "--model", "m"], env=env)
    assert missing.exit_code != 0 and "not registered" in missing.output
