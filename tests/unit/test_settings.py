"""camstream.settings and camstream.cameras: bad configuration names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from camstream.cameras import CameraConfigError, load_cameras
from camstream.settings import load_settings


def test_environment_overrides_and_kafka_properties_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAMSTREAM_KAFKA_BOOTSTRAP", "broker:9093")
    monkeypatch.setenv(
        "CAMSTREAM_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.username": "u"}'
    )
    monkeypatch.setenv("CAMSTREAM_TOPIC_PREFIX", "site1.")
    settings = load_settings()
    assert settings.kafka_client_config()["security.protocol"] == "SASL_SSL"
    assert settings.kafka_client_config()["bootstrap.servers"] == "broker:9093"
    assert settings.frames_topic == "site1.frames"
    assert settings.dlq_topic == "site1.frames.dlq"


def test_invalid_value_stops_with_the_variable_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSTREAM_BATCH_MAX", "0")
    with pytest.raises(SystemExit) as err:
        load_settings()
    assert "CAMSTREAM_BATCH_MAX" in str(err.value)


def test_settings_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "camstream.yaml"
    config.write_text("batch_max: 8\ntop_k: 3\n")
    monkeypatch.setenv("CAMSTREAM_CONFIG_FILE", str(config))
    monkeypatch.setenv("CAMSTREAM_TOP_K", "7")
    settings = load_settings()
    assert (settings.batch_max, settings.top_k) == (8, 7)


def test_missing_settings_file_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSTREAM_CONFIG_FILE", "/nonexistent/camstream.yaml")
    with pytest.raises(SystemExit, match="CAMSTREAM_CONFIG_FILE"):
        load_settings()


def test_camera_file_error_names_the_camera_and_field(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n  - id: lobby\n    source: /videos/lobby.mp4\n    fps: -2\n")
    with pytest.raises(CameraConfigError, match=r"camera lobby: fps"):
        load_cameras(path)


def test_camera_ids_must_be_unique(tmp_path: Path) -> None:
    path = tmp_path / "cameras.toml"
    path.write_text('[[cameras]]\nid = "a"\nsource = "x"\n[[cameras]]\nid = "a"\nsource = "y"\n')
    with pytest.raises(CameraConfigError, match="repeated"):
        load_cameras(path)
