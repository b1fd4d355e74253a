"""Per-camera streaming activity: what the worker pushes to Feast's activity view.

Over a rolling window of capture time: frames seen, label counts (the published label,
``uncertain`` included), the most frequent label, mean top-1 confidence and the last
capture time. ``observe`` is O(1) per frame; rows are computed only for cameras seen
since the last ``rows`` call, once per push interval.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

ACTIVITY_PUSH_SOURCE = "camera_activity_push_source"


class ActivityTracker:
    def __init__(self, window_s: float) -> None:
        self.window_ms = int(window_s * 1000)
        self._frames: dict[str, deque[tuple[int, str, float]]] = {}
        self._changed: set[str] = set()

    def observe(self, camera_id: str, capture_ts_ms: int, label: str, score: float) -> None:
        self._frames.setdefault(camera_id, deque()).append((capture_ts_ms, label, score))
        self._changed.add(camera_id)

    def rows(self, now_ms: int) -> list[dict[str, Any]]:
        """Feature rows (camera_activity_push_source's columns) of changed cameras."""
        out = []
        for camera_id in sorted(self._changed):
            frames = self._frames[camera_id]
            last_seen = max(ts for ts, _label, _score in frames)
            while frames and frames[0][0] < now_ms - self.window_ms:
                frames.popleft()
            counts = Counter(label for _ts, label, _score in frames)
            scores = [score for _ts, _label, score in frames]
            out.append(
                {
                    "camera_id": camera_id,
                    "event_timestamp": datetime.fromtimestamp(now_ms / 1000, tz=UTC),
                    "frames_in_window": len(frames),
                    "top_label": counts.most_common(1)[0][0] if counts else "",
                    "label_counts": json.dumps(dict(counts.most_common()), sort_keys=True),
                    "mean_confidence": sum(scores) / len(scores) if scores else 0.0,
                    "last_seen_ms": last_seen,
                }
            )
            if not frames:
                del self._frames[camera_id]
        self._changed.clear()
        return out
