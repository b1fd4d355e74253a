"""Camera sources: open a camera, read BGR frames, close it.

Errors (the exception tree, under camstream.errors.CamstreamError):

    SourceError                 a source failed while running
    +-- SourceEnded             a finite source (file, folder) played to its end
    +-- SourceConnectionError   a stream or device could not be opened or stopped
                                delivering; the camera reopens it with backoff

Bad configuration (unknown form, missing folder) is CameraConfigError, raised before
anything starts. A source does no rate control: producers.feed samples and paces.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from camstream.cameras import (
    IMAGE_SUFFIXES,
    CameraSpec,
    SourceKind,
    device_address,
    synthetic_size,
)
from camstream.errors import CamstreamError

Image = npt.NDArray[np.uint8]


class SourceError(CamstreamError, RuntimeError):
    """A source failed while running (as opposed to bad configuration)."""


class SourceEnded(SourceError):
    """A finite source played to its end."""


class SourceConnectionError(SourceError):
    """A stream or device could not be opened, or stopped delivering frames."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    open_s: float = 10.0
    read_s: float = 5.0


class Source(Protocol):
    """One camera's frames. ``native_fps`` is the source's own rate, 0 when unknown."""

    native_fps: float

    def open(self) -> None: ...

    def read(self) -> Image:
        """The next frame; raises SourceEnded or SourceConnectionError."""
        ...

    def skip(self) -> None:
        """Advance past one frame without decoding it where the source allows."""
        ...

    def close(self) -> None: ...


class CaptureSource:
    """OpenCV VideoCapture: files (FFmpeg), RTSP/HTTP streams (FFmpeg), V4L2 devices.

    Streams get OpenCV's open and read timeouts, so a hung server costs one timeout,
    not the FFmpeg default of about 30 s per read.
    """

    def __init__(self, target: str | int, kind: SourceKind, timeouts: Timeouts) -> None:
        self.target = target
        self.kind = kind
        self.timeouts = timeouts
        self.native_fps = 0.0
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.close()
        backend = cv2.CAP_V4L2 if self.kind is SourceKind.DEVICE else cv2.CAP_FFMPEG
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.timeouts.open_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.timeouts.read_s * 1000),
        ]
        cap = cv2.VideoCapture(self.target, backend, params)
        if not cap.isOpened():
            cap.release()
            if self.kind is SourceKind.FILE:
                raise SourceEnded(f"cannot open video file {self.target} (unreadable format?)")
            raise SourceConnectionError(f"cannot open {self.kind} source {self.target}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.native_fps = fps if 0 < fps < 1000 else 0.0
        self._cap = cap

    def read(self) -> Image:
        if self._cap is None:
            raise SourceConnectionError("source is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.kind is SourceKind.FILE:
                raise SourceEnded(f"video file {self.target} ended")
            raise SourceConnectionError(f"{self.kind} source {self.target} stopped delivering")
        return np.asarray(image, dtype=np.uint8)

    def skip(self) -> None:
        if self._cap is None or not self._cap.grab():
            if self.kind is SourceKind.FILE:
                raise SourceEnded(f"video file {self.target} ended")
            raise SourceConnectionError(f"{self.kind} source {self.target} stopped delivering")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _natural_key(path: Path) -> list[int | str]:
    """img2 before img10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FolderSource:
    """The images of a folder in natural name order; new files are seen on each pass."""

    native_fps = 0.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: list[Path] = []
        self._index = 0

    def open(self) -> None:
        self._files = sorted(
            (p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural_key,
        )
        self._index = 0

    def _next_path(self) -> Path:
        if self._index >= len(self._files):
            raise SourceEnded(f"image folder {self.folder} ended")
        path = self._files[self._index]
        self._index += 1
        return path

    def read(self) -> Image:
        while True:
            path = self._next_path()
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return np.asarray(image, dtype=np.uint8)
            # An unreadable file (partly written, not an image) is skipped, not fatal.

    def skip(self) -> None:
        self._next_path()

    def close(self) -> None:
        self._files = []


class SyntheticSource:
    """A moving test pattern for load tests: a fixed textured background, a bright
    block that moves one step per frame and the frame number, so consecutive frames
    differ and compress like camera frames rather than like a flat colour."""

    native_fps = 0.0

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(7)
        xs = np.linspace(0, 255, width, dtype=np.float32)
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        base = np.stack([xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2], axis=-1)
        noise = rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)
        self._background = np.clip(base + noise, 0, 255).astype(np.uint8)
        self._count = 0

    def open(self) -> None:
        pass

    def read(self) -> Image:
        image = self._background.copy()
        side = max(self.height // 5, 8)
        span = max(self.width - side, 1)
        x = (self._count * 7) % span
        y = (self.height - side) // 2
        image[y : y + side, x : x + side] = (40, 220, 250)
        cv2.putText(
            image,
            str(self._count),
            (8, max(self.height // 10, 12)),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(self.height / 480, 0.4),
            (255, 255, 255),
            2,
        )
        self._count += 1
        return image

    def skip(self) -> None:
        self._count += 1

    def close(self) -> None:
        pass


def make_source(camera: CameraSpec, timeouts: Timeouts) -> Source:
    """The source for a camera whose configuration passed ``check_source``."""
    kind = camera.kind
    if kind is SourceKind.FOLDER:
        return FolderSource(Path(camera.source).expanduser())
    if kind is SourceKind.SYNTHETIC:
        return SyntheticSource(*synthetic_size(camera.source))
    if kind is SourceKind.DEVICE:
        return CaptureSource(device_address(camera.source), kind, timeouts)
    if kind is SourceKind.FILE:
        return CaptureSource(str(Path(camera.source).expanduser()), kind, timeouts)
    return CaptureSource(camera.source, kind, timeouts)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
