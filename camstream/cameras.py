"""Camera definitions: where a camera's frames come from and the metadata Feast serves.

A cameras file (YAML or TOML) holds a list under ``cameras:``; each entry is a
CameraSpec. Producers use the source fields, the feature store the metadata fields.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class CameraConfigError(ValueError):
    """A camera definition that cannot be used; the message names the camera and the fix."""


class CameraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(description="A video file, an image folder, an rtsp/http URL, ...")
    fps: float = Field(default=10.0, gt=0, le=120, description="Target publish rate.")
    loop: bool = Field(default=False, description="Replay a file source when it ends.")
    max_width: int = Field(default=1280, ge=32)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    enabled: bool = True

    # Metadata, served by Feast to the worker.
    site: str = "default"
    zone: str = "default"
    indoor: bool = False
    confidence_threshold: float = Field(default=0.2, ge=0, le=1)

    @field_validator("id")
    @classmethod
    def _id_is_plain(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or ":" in value:
            raise ValueError("camera id may not contain whitespace or ':'")
        return value


def load_cameras(path: Path) -> list[CameraSpec]:
    """Read a cameras file; raises CameraConfigError naming the camera and the field."""
    if not path.is_file():
        raise CameraConfigError(f"cameras file {path} does not exist")
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    entries = (raw or {}).get("cameras") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CameraConfigError(f"{path}: expected a non-empty list under 'cameras:'")
    cameras = []
    for index, entry in enumerate(entries):
        name = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        try:
            cameras.append(CameraSpec.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise CameraConfigError(f"{path}: camera {name}: {problems}") from exc
    ids = [camera.id for camera in cameras]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CameraConfigError(f"{path}: camera ids must be unique; repeated: {duplicates}")
    return cameras


def dump_cameras(cameras: list[CameraSpec], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"cameras": [c.model_dump() for c in cameras]}))
