"""Thumbnails: a camera's frame as a small JPEG, at most one per camera per interval.

Frames between thumbnails are only counted, never decoded, so the view's cost does not
grow with the cameras' frame rate. A frame's size is read from its JPEG header and
checked before any decoding (as the worker does); it is decoded at a reduced size
(libjpeg's scaled decode, the cheapest way to a small image), then scaled to the
thumbnail's width.
"""

from __future__ import annotations

import cv2
import numpy as np

from camstream.errors import FrameRejected
from camstream.imaging import decode_jpeg, encode_jpeg, fit_within, jpeg_dimensions

MAX_FRAME_BYTES = 8_000_000
MAX_FRAME_PIXELS = 40_000_000


class Thumbnailer:
    """Makes thumbnails ``width`` pixels wide, one per camera per ``interval_s``."""

    def __init__(self, width: int = 320, interval_s: float = 1.0, quality: int = 70) -> None:
        self.width = width
        self.interval_s = interval_s
        self.quality = quality
        self.made = 0
        self.failed = 0
        self._last: dict[str, float] = {}

    def due(self, camera_id: str, now_s: float) -> bool:
        """Whether this camera's next frame should become its thumbnail."""
        last = self._last.get(camera_id)
        return last is None or now_s - last >= self.interval_s

    def forget(self, camera_id: str) -> None:
        self._last.pop(camera_id, None)

    def make(self, camera_id: str, jpeg: bytes, now_s: float) -> bytes | None:
        """The thumbnail of one frame; None when it is not a usable JPEG (counted)."""
        self._last[camera_id] = now_s
        thumbnail = self._thumbnail(jpeg)
        if thumbnail is None:
            self.failed += 1
        else:
            self.made += 1
        return thumbnail

    def _thumbnail(self, jpeg: bytes) -> bytes | None:
        if len(jpeg) > MAX_FRAME_BYTES:
            return None
        try:
            width, height = jpeg_dimensions(jpeg)
            if width * height > MAX_FRAME_PIXELS:
                return None
            factor = next((f for f in (8, 4, 2) if width // f >= self.width), 1)
            image = decode_jpeg(jpeg, factor)
            small = fit_within(image, self.width, self.width * 4)
            return encode_jpeg(np.ascontiguousarray(small), self.quality)
        except (FrameRejected, cv2.error):
            return None
