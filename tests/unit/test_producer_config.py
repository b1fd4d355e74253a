"""Camera configuration: source kinds, and bad configuration that names camera and fix."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from camstream.cameras import (
    Backpressure,
    CameraConfigError,
    CameraSpec,
    SourceKind,
    check_source,
    dump_cameras,
    load_cameras,
    synthetic_size,
)
from producers.producer import check_cameras


def _camera(source: str, **fields: object) -> CameraSpec:
    return CameraSpec(id="lobby", source=source, **fields)  # type: ignore[arg-type]


def test_source_kind_follows_the_source_form(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    assert _camera("rtsp://cam/1").kind is SourceKind.RTSP
    assert _camera("https://cam/mjpeg").kind is SourceKind.HTTP
    assert _camera("device:0").kind is SourceKind.DEVICE
    assert _camera("/dev/video3").kind is SourceKind.DEVICE
    assert _camera("synthetic:640x480").kind is SourceKind.SYNTHETIC
    assert _camera(str(tmp_path)).kind is SourceKind.FOLDER
    assert _camera(str(video)).kind is SourceKind.FILE
    assert synthetic_size("synthetic:") == synthetic_size("synthetic") == (1280, 720)


def test_live_sources_drop_oldest_and_files_wait_by_default(tmp_path: Path) -> None:
    assert _camera("rtsp://cam/1").policy is Backpressure.DROP_OLDEST
    assert _camera(str(tmp_path)).policy is Backpressure.WAIT
    assert _camera("synthetic:").policy is Backpressure.WAIT


@pytest.mark.parametrize(
    ("source", "fix"),
    [
        ("/nowhere/lobby.mp4", "give a video file"),
        ("ftp://cam/1", "unknown source scheme"),
        ("device:7", "plug the camera in"),
        ("/dev/video9", "plug the camera in"),
        ("synthetic:4x4", "use 16x16"),
    ],
)
def test_unusable_source_stops_with_camera_and_fix(source: str, fix: str) -> None:
    with pytest.raises(CameraConfigError, match=rf"camera lobby: .*{fix}"):
        check_source(_camera(source))


def test_empty_image_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CameraConfigError, match=r"camera lobby: image folder .* holds no images"):
        check_source(_camera(str(tmp_path)))


def test_live_source_cannot_be_told_to_wait() -> None:
    with pytest.raises(CameraConfigError, match="remove 'backpressure: wait'"):
        check_source(_camera("rtsp://cam/1", backpressure="wait"))


@pytest.mark.parametrize(
    ("entry", "fix"),
    [
        ("fps: 0", "set fps to a number above 0"),
        ("fps: fast", "set fps to a number above 0"),
        ("jpeg_quality: 5", "set jpeg_quality between 10 and 100"),
        ("colour: red", "remove it; known fields"),
    ],
)
def test_bad_field_in_cameras_file_names_camera_and_fix(
    tmp_path: Path, entry: str, fix: str
) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(f"cameras:\n  - id: lobby\n    source: synthetic\n    {entry}\n")
    with pytest.raises(CameraConfigError, match=rf"camera lobby: .*{fix}"):
        load_cameras(path)


def test_cameras_file_round_trips_with_source_settings(tmp_path: Path) -> None:
    cameras = [
        _camera("rtsp://cam/1", fps=5, backpressure="drop_oldest", max_height=480),
        CameraSpec(id="gate", source="synthetic:320x240", zone="gate"),
    ]
    path = tmp_path / "cameras.yaml"
    dump_cameras(cameras, path)
    assert load_cameras(path) == cameras


def test_producing_needs_an_enabled_camera_and_unique_ids(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    with pytest.raises(CameraConfigError, match="no enabled camera"):
        check_cameras([_camera("synthetic:", enabled=False)])
    with pytest.raises(CameraConfigError, match="repeated"):
        check_cameras([_camera("synthetic:"), _camera(str(tmp_path))])


def test_kafka_property_the_client_rejects_stops_with_the_variable_to_fix(
    tmp_path: Path,
) -> None:
    import threading

    from camstream.settings import Settings
    from producers.producer import ProducerFatalError, run_producers

    settings = Settings(state_dir=tmp_path, kafka_config={"no.such.property": "1"})
    with pytest.raises(ProducerFatalError, match="fix CAMSTREAM_KAFKA_CONFIG"):
        run_producers(settings, [_camera("synthetic")], threading.Event(), max_frames=1)
