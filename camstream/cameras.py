"""Camera definitions: where a camera's frames come from and the metadata Feast serves.

A cameras file (YAML or TOML) holds a list under ``cameras:``; each entry is a
CameraSpec. Producers use the source fields, the feature store the metadata fields.

A source is written as one string; its kind follows from its form:

| source | kind |
| --- | --- |
| ``rtsp://...``, ``rtsps://...`` | ``rtsp`` (live) |
| ``http://...``, ``https://...`` (MJPEG, HLS, ...) | ``http`` (live) |
| ``device:0``, ``device:/dev/video2``, ``/dev/video0`` | ``device`` (USB/V4L2, live) |
| ``synthetic`` or ``synthetic:1280x720`` | ``synthetic`` (a moving test pattern) |
| an existing folder | ``folder`` (its images in name order) |
| an existing file | ``file`` (a video, once or looping) |

``check_source`` checks what can be checked before producing (the file, folder or
device exists) and names the camera and the fix when it cannot be used.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from camstream.errors import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SOURCE_FORMS = (
    "a video file, an image folder, rtsp://..., http(s)://..., device:N or /dev/videoN, "
    "or synthetic:WIDTHxHEIGHT"
)

_SYNTHETIC = re.compile(r"^synthetic(?::(?:(\d+)x(\d+))?)?$")
_DEVICE_PATH = re.compile(r"^/dev/video\d+$")


class CameraConfigError(ConfigError):
    """A camera definition that cannot be used; the message names the camera and the fix."""


class SourceKind(StrEnum):
    FILE = "file"
    FOLDER = "folder"
    RTSP = "rtsp"
    HTTP = "http"
    DEVICE = "device"
    SYNTHETIC = "synthetic"

    @property
    def live(self) -> bool:
        """Live sources run in real time whether or not anyone reads them."""
        return self in (SourceKind.RTSP, SourceKind.HTTP, SourceKind.DEVICE)


class Backpressure(StrEnum):
    """What a camera does when publishing is slower than its source.

    ``wait``: read the next frame only when the last one is published (files, folders,
    synthetic: nothing is lost, the source just plays slower). ``drop_oldest``: read
    eagerly, keep only the freshest frame, count the stale ones as dropped (live
    streams never fall behind real time).
    """

    WAIT = "wait"
    DROP_OLDEST = "drop_oldest"


# Hints appended to validation errors, by field: what to write instead.
_FIELD_FIXES = {
    "id": "use letters, digits, '.', '_' or '-'",
    "fps": "set fps to a number above 0 and at most 120",
    "max_width": "set max_width to at least 32 pixels",
    "max_height": "set max_height to at least 32 pixels",
    "jpeg_quality": "set jpeg_quality between 10 and 100",
    "confidence_threshold": "set confidence_threshold between 0 and 1",
    "backpressure": "use wait or drop_oldest, or leave it out for the source's default",
}


class CameraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(description=f"Where frames come from: {SOURCE_FORMS}.")
    fps: float = Field(default=10.0, gt=0, le=120, description="Target publish rate.")
    loop: bool = Field(default=False, description="Replay a file or folder when it ends.")
    max_width: int = Field(default=1280, ge=32, description="Frames are scaled to fit.")
    max_height: int = Field(default=720, ge=32, description="Frames are scaled to fit.")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    enabled: bool = True
    backpressure: Backpressure | None = Field(
        default=None, description="Default: drop_oldest for live sources, wait otherwise."
    )

    # Metadata, served by Feast to the worker.
    site: str = "default"
    zone: str = "default"
    indoor: bool = False
    confidence_threshold: float = Field(default=0.2, ge=0, le=1)

    # Routing, served by Feast to the worker and changed at run time by `camstream
    # promote`, `rollback` and `shadow`.
    model: str = Field(default="", description="The model that answers; '' = the default.")
    model_version: str = Field(
        default="", description="Its version; '' = the model's default (serving.json)."
    )
    shadow_model: str = Field(default="", description="'NAME:VERSION' classifying in shadow.")
    shadow_fraction: float = Field(default=0.0, ge=0, le=1)

    @field_validator("model_version")
    @classmethod
    def _version_is_a_number(cls, value: str) -> str:
        if value and not (value.isascii() and value.isdigit() and not value.startswith("0")):
            raise ValueError("model_version is a positive integer, or empty for the default")
        return value

    @field_validator("shadow_model")
    @classmethod
    def _shadow_names_a_version(cls, value: str) -> str:
        name, _, version = value.partition(":")
        if value and not (name and version.isascii() and version.isdigit()):
            raise ValueError("shadow_model is 'NAME:VERSION' (e.g. fashion:2), or empty")
        return value

    @field_validator("id")
    @classmethod
    def _id_is_plain(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or ":" in value:
            raise ValueError("camera id may not contain whitespace or ':'")
        return value

    @property
    def kind(self) -> SourceKind:
        """The source's kind, from its form (see the module docstring)."""
        return source_kind(self.source)

    @property
    def policy(self) -> Backpressure:
        if self.backpressure is not None:
            return self.backpressure
        return Backpressure.DROP_OLDEST if self.kind.live else Backpressure.WAIT


def source_kind(source: str) -> SourceKind:
    """The kind of a source string; raises CameraConfigError for a form it does not know."""
    lowered = source.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return SourceKind.RTSP
    if lowered.startswith(("http://", "https://")):
        return SourceKind.HTTP
    if lowered.startswith("device:") or _DEVICE_PATH.match(source):
        return SourceKind.DEVICE
    if _SYNTHETIC.match(lowered):
        return SourceKind.SYNTHETIC
    path = Path(source).expanduser()
    if path.is_dir():
        return SourceKind.FOLDER
    if path.is_file():
        return SourceKind.FILE
    if "://" in source:
        raise CameraConfigError(f"unknown source scheme in {source!r}")
    raise CameraConfigError(f"{source!r} is not an existing file or folder")


def device_address(source: str) -> int | str:
    """``device:0`` -> 0, ``device:/dev/video2`` or ``/dev/video2`` -> the path."""
    value = source.removeprefix("device:")
    return int(value) if value.isdigit() else value


def synthetic_size(source: str) -> tuple[int, int]:
    """(width, height) of a ``synthetic:WxH`` source; 1280x720 for plain ``synthetic``."""
    match = _SYNTHETIC.match(source.lower())
    if match is None or match.group(1) is None:
        return 1280, 720
    return int(match.group(1)), int(match.group(2))


def check_source(camera: CameraSpec) -> SourceKind:
    """Check what can be checked before producing; raise CameraConfigError with the fix.

    Network streams are not contacted here: a camera that is down at start-up is
    retried like one that fails later.
    """
    try:
        kind = camera.kind
    except ValueError as exc:
        raise CameraConfigError(
            f"camera {camera.id}: source {camera.source!r} is not usable ({exc}); "
            f"give {SOURCE_FORMS}"
        ) from exc
    if kind is SourceKind.DEVICE:
        address = device_address(camera.source)
        path = Path(f"/dev/video{address}") if isinstance(address, int) else Path(address)
        if not path.exists():
            raise CameraConfigError(
                f"camera {camera.id}: video device {path} does not exist; plug the camera "
                "in, or fix the device index/path (ls /dev/video*)"
            )
    elif kind is SourceKind.FOLDER:
        folder = Path(camera.source).expanduser()
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            raise CameraConfigError(
                f"camera {camera.id}: image folder {folder} holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or fix the path"
            )
    elif kind is SourceKind.SYNTHETIC:
        width, height = synthetic_size(camera.source)
        if not (16 <= width <= 7680 and 16 <= height <= 4320):
            raise CameraConfigError(
                f"camera {camera.id}: synthetic size {width}x{height} is out of range; "
                "use 16x16 up to 7680x4320"
            )
    if kind.live and camera.backpressure is Backpressure.WAIT:
        raise CameraConfigError(
            f"camera {camera.id}: a live {kind} source cannot wait for the publisher (it "
            "would fall behind real time); remove 'backpressure: wait'"
        )
    return kind


def describe_errors(exc: ValidationError) -> str:
    """Validation errors as 'field: problem (fix)' joined by '; '."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "entry"
        fix = _FIELD_FIXES.get(str(err["loc"][0])) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            fix = f"remove it; known fields: {', '.join(CameraSpec.model_fields)}"
        elif err["type"] == "missing":
            fix = f"add {field}"
        problems.append(f"{field}: {err['msg']}" + (f" ({fix})" if fix else ""))
    return "; ".join(problems)


def camera_from_entry(entry: Any, name: str) -> CameraSpec:
    """One camera from a parsed cameras-file entry or flags; errors name the camera."""
    try:
        return CameraSpec.model_validate(entry)
    except ValidationError as exc:
        raise CameraConfigError(f"camera {name}: {describe_errors(exc)}") from exc


def load_cameras(path: Path) -> list[CameraSpec]:
    """Read a cameras file; raises CameraConfigError naming the camera and the field."""
    if not path.is_file():
        raise CameraConfigError(
            f"cameras file {path} does not exist; create it (a list under 'cameras:') or "
            "fix the path"
        )
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise CameraConfigError(f"{path}: not valid {path.suffix or 'YAML'}: {exc}") from exc
    entries = (raw or {}).get("cameras") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CameraConfigError(f"{path}: expected a non-empty list under 'cameras:'")
    cameras = []
    for index, entry in enumerate(entries):
        name = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        try:
            cameras.append(camera_from_entry(entry, str(name)))
        except CameraConfigError as exc:
            raise CameraConfigError(f"{path}: {exc}") from exc
    ids = [camera.id for camera in cameras]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CameraConfigError(
            f"{path}: camera ids must be unique; repeated: {duplicates}; rename one of each"
        )
    return cameras


def dump_cameras(cameras: list[CameraSpec], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        yaml.safe_dump({"cameras": [c.model_dump(mode="json", exclude_none=True) for c in cameras]})
    )
    tmp.replace(path)
