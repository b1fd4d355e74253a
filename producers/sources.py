"""Camera sources: things that yield BGR frames at a target rate.

A source is an iterator of Frame; it ends when the camera ends (a file played once).
Rate control happens here by sampling: a file is read at the pace of its own clock and
every frame due at the target rate is yielded, the rest are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from camstream.cameras import CameraConfigError, CameraSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(RuntimeError):
    """A source failed while running (as opposed to bad configuration)."""


@dataclass(frozen=True, slots=True)
class Frame:
    image: npt.NDArray[np.uint8]
    capture_ts_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _paced(frames: Iterator[npt.NDArray[np.uint8]], fps: float) -> Iterator[Frame]:
    """Yield one frame per 1/fps seconds on a fixed schedule (no drift)."""
    period = 1.0 / fps
    next_due = time.monotonic()
    for image in frames:
        delay = next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield Frame(image, _now_ms())
        next_due += period
        if time.monotonic() - next_due > period:  # fell behind: realign, never burst
            next_due = time.monotonic()


def _video_frames(path: Path, target_fps: float, loop: bool) -> Iterator[npt.NDArray[np.uint8]]:
    """Frames of a video file, sampled from its native rate down to ``target_fps``."""
    while True:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise SourceError(f"cannot open video {path}")
        native = cap.get(cv2.CAP_PROP_FPS) or target_fps
        step = max(native / target_fps, 1.0)
        position = 0.0
        index = 0
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                if index >= position:
                    position += step
                    yield image
                index += 1
        finally:
            cap.release()
        if not loop:
            return


def _folder_frames(folder: Path, loop: bool) -> Iterator[npt.NDArray[np.uint8]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CameraConfigError(f"image folder {folder} holds no images")
    while True:
        for path in files:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                yield image
        if not loop:
            return


def open_source(camera: CameraSpec) -> Iterator[Frame]:
    """The frame iterator for a camera; raises CameraConfigError when it cannot be used."""
    path = Path(camera.source)
    if path.is_dir():
        return _paced(_folder_frames(path, camera.loop), camera.fps)
    if path.is_file():
        return _paced(_video_frames(path, camera.fps, camera.loop), camera.fps)
    raise CameraConfigError(
        f"camera {camera.id}: source {camera.source!r} is not an existing video file or "
        "image folder; fix the path in the cameras file"
    )


def fit_width(image: npt.NDArray[np.uint8], max_width: int) -> npt.NDArray[np.uint8]:
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    scale = max_width / width
    return cv2.resize(image, (max_width, round(height * scale)), interpolation=cv2.INTER_AREA)
