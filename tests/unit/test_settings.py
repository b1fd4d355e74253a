"""camstream.settings and camstream.cameras: bad configuration names the fix, and a
child process gets exactly its parent's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from camstream.cameras import CameraConfigError, load_cameras
from camstream.errors import ConfigError
from camstream.settings import Settings, load_settings
from camstream.stack.local import LocalStack, StackInfo


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
    with pytest.raises(ConfigError) as err:
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
    with pytest.raises(ConfigError, match="CAMSTREAM_CONFIG_FILE"):
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


def test_camera_errors_are_config_errors() -> None:
    assert issubclass(CameraConfigError, ConfigError)


# Settings that travel to child processes ----------------------------------------------


def _clear_camstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CAMSTREAM_"):
            monkeypatch.delenv(name)


def _non_trivial(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state with space",
        model_repo=tmp_path / "repo",
        kafka_config={"security.protocol": "SASL_SSL", "sasl.password": 'p"w,{}=x'},
        delivery="exactly_once",
        batch_max=7,
        batch_within_s=0.1 + 0.2,
        model_version="3",
        producer_ffmpeg_options="",
        feast_repo=Path("relative/feast"),
        topic_prefix="site-1.",
        log_level="INFO",
    )


def test_to_env_round_trips_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings made in code: paths, a dict, a literal, a float that is not short,
    # an empty string and a value set to its default
    settings = _non_trivial(tmp_path)
    _clear_camstream_env(monkeypatch)
    # When a process reads its settings back from to_env() alone
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    again = Settings()
    # Then they are equal, field for field, and an explicit default stays explicit
    assert again == settings
    assert again.model_dump() == settings.model_dump()
    assert "log_level" in again.model_fields_set


def test_to_env_writes_only_what_was_set_or_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_camstream_env(monkeypatch)
    # Given defaults, one set to its default value and one changed
    assert Settings().to_env() == {}
    env = Settings(batch_max=16, top_k=3).to_env()
    # Then only those two are written
    assert env == {"CAMSTREAM_BATCH_MAX": "16", "CAMSTREAM_TOP_K": "3"}


def test_child_env_replaces_the_parents_camstream_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a parent whose environment and settings file say other things
    config = tmp_path / "camstream.yaml"
    config.write_text("batch_max: 8\n")
    base = {
        "PATH": "/usr/bin",
        "CAMSTREAM_TOP_K": "9",
        "CAMSTREAM_CONFIG_FILE": str(config),
    }
    settings = Settings(top_k=2, state_dir=tmp_path)
    # When a child's environment is made from the settings
    env = settings.child_env(base)
    # Then the settings win, stale CAMSTREAM_* variables and the file are gone
    assert env["PATH"] == "/usr/bin"
    assert env["CAMSTREAM_TOP_K"] == "2"
    assert "CAMSTREAM_CONFIG_FILE" not in env
    _clear_camstream_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_local_stack_children_get_the_stacks_own_settings(tmp_path: Path) -> None:
    # Given a stack built from settings made in code, and the endpoints it chose
    settings = Settings(
        state_dir=tmp_path,
        model_repo=tmp_path / "models",
        delivery="exactly_once",
        batch_max=4,
        topic_replication_factor=1,
    )
    stack = LocalStack(settings)
    stack.info = StackInfo(
        kafka_bootstrap="127.0.0.1:1234",
        triton_grpc="127.0.0.1:5678",
        triton_http="127.0.0.1:5679",
        triton_metrics_port=5680,
        feast_repo=str(tmp_path / "feast"),
        state_dir=str(tmp_path),
        topic_prefix=settings.topic_prefix,
    )
    # When a worker's settings are made
    child = stack.child_settings(worker_data_dir=tmp_path / "worker", metrics_port=9999)
    # Then the settings given in code reach it, pointed at the stack's services
    assert (child.model_repo, child.delivery, child.batch_max) == (
        settings.model_repo,
        "exactly_once",
        4,
    )
    assert child.kafka_bootstrap == "127.0.0.1:1234"
    assert child.triton_grpc == "127.0.0.1:5678"
    assert child.feast_repo == tmp_path / "feast"
    env = child.child_env({})
    assert env["CAMSTREAM_MODEL_REPO"] == str(tmp_path / "models")
    assert env["CAMSTREAM_DELIVERY"] == "exactly_once"
    assert env["CAMSTREAM_METRICS_PORT"] == "9999"


def test_child_env_drops_prometheus_multiprocess_variables(tmp_path: Path) -> None:
    # Given a parent that imported feast (which sets prometheus' multiprocess variables)
    base = {
        "PATH": "/usr/bin",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/x",
        "prometheus_multiproc_dir": "/tmp/x",
        "PROMETHEUS_MULTIPROCESS_DIR": "/tmp/x",
    }
    # Then a child runs prometheus_client in its normal, single-process mode
    env = Settings(state_dir=tmp_path).child_env(base)
    assert env["PATH"] == "/usr/bin"
    assert not {k for k in env if "multiproc" in k.lower()}
