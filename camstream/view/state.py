"""What the view knows of each camera: records in, tiles and camera pages out.

``FleetState`` takes the records of the pipeline's topics as plain JSON objects, read
defensively: a field missing or of the wrong type leaves the camera as it was, and a
record of a newer schema still shows what it shares with this one. Per camera it keeps
the latest prediction, rates, drift and data-quality state, DLQ count, shadow
agreement and a bounded history for the camera page. Time comes from the injected
clock, so tests drive it without sleeping. The Kafka reader threads and the event loop
share it: every public method holds its one lock.

A camera is ``live`` while its last prediction is younger than its stale limit (at
least ``stale_s``; three of its own intervals for a slower camera), ``stale`` after,
and ``waiting`` until its first prediction (known from frames, the DLQ or the
registry). Memory is bounded: at most ``max_cameras`` cameras (records of others are
counted and dropped), and a fixed history per camera.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Statistic names of a drift record that are data-quality signals, and what the tile
# calls them. Every other statistic is a drift test against a baseline.
QUALITY_SIGNALS = {
    "frozen": "frozen",
    "black_frames": "dark",
    "overexposed_frames": "overexposed",
    "silence": "silent",
}
MAX_CAMERA_ID = 200  # characters, as camstream.cameras allows; longer is not a camera
MAX_TEXT = 300  # characters kept of a free-text field (a DLQ message, a drift reason)


def _now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return str(value)[:limit] if value is not None else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def model_ref(value: Any) -> str:
    """``name:version`` of a record's ModelRef object ('' when it has none)."""
    if not isinstance(value, Mapping) or not value.get("name"):
        return ""
    name, version = _text(value["name"], 100), _text(value.get("version"), 20)
    return f"{name}:{version}" if version else name


class RateMeter:
    """Events per second over the last ``window_s`` whole seconds, by event time."""

    def __init__(self, window_s: int = 5) -> None:
        self.window_s = window_s
        self._buckets: dict[int, int] = {}

    def add(self, ts_ms: int) -> None:
        second = ts_ms // 1000
        self._buckets[second] = self._buckets.get(second, 0) + 1
        if len(self._buckets) > 4 * self.window_s:
            newest = max(self._buckets)
            for old in [s for s in self._buckets if s < newest - 2 * self.window_s]:
                del self._buckets[old]

    def rate(self, now_ms: int) -> float:
        """The mean over the whole seconds before the current one (which is partial)."""
        now_s = now_ms // 1000
        counted = sum(n for s, n in self._buckets.items() if now_s - self.window_s <= s < now_s)
        return counted / self.window_s


@dataclass
class DriftView:
    state: str = "unknown"  # unknown | calibrating | ok | drifting
    reasons: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)  # frozen, dark, overexposed, silent
    window_end_ms: int = 0
    frames: int = 0
    model: str = ""


@dataclass
class DriftPoint:
    """One drift record, as the camera page charts it."""

    start_ms: int
    end_ms: int
    kind: str  # window | silence
    frames: int
    drift: bool
    calibrating: bool
    reasons: list[str]
    stats: dict[str, list[Any]]  # "name/test" -> [value, threshold, drifted]

    def as_json(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "kind": self.kind,
            "frames": self.frames,
            "drift": self.drift,
            "calibrating": self.calibrating,
            "reasons": self.reasons,
            "stats": self.stats,
        }


@dataclass
class ShadowView:
    candidate: str = ""
    label: str = ""
    score: float = 0.0
    champion_label: str = ""
    agree: bool = True
    seq: int = -1
    agreement_rate: float | None = None  # of the last summary window
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=50))


@dataclass
class CameraView:
    camera_id: str
    predictions: deque[list[Any]]  # [published_ms, label, score, e2e_ms, seq]
    windows: deque[DriftPoint]
    shadow_windows: deque[dict[str, Any]]
    seq: int = -1
    label: str = ""
    score: float = 0.0
    threshold: float = 0.0
    top: list[tuple[str, float]] = field(default_factory=list)
    model: str = ""
    enrichment: str = ""
    e2e_ms: float | None = None
    capture_ts_ms: int = 0
    published_ts_ms: int = 0
    last_seen_ms: int = 0  # when its last prediction was published (or seen, if sooner)
    last_activity_ms: int = 0  # its last record of any kind, by the view's clock
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    frames: int = 0
    thumb_version: int = 0
    thumbnail: bytes | None = None
    drift: DriftView = field(default_factory=DriftView)
    dlq_count: int = 0
    dlq_kinds: Counter[str] = field(default_factory=Counter)
    dlq_last: str = ""
    shadow: ShadowView | None = None
    registered: bool | None = None  # None: never seen in the registry
    route: str = ""  # model[:version] the registry routes it to ('' = the default)


def _drift_point(record: Mapping[str, Any], now_ms: int) -> tuple[DriftPoint, set[str], bool]:
    """A drift record's point, its data-quality flags, and whether a drift test (not a
    data-quality signal) drifted outside calibration."""
    end = _integer(record.get("window_end_ms")) or now_ms
    calibrating = record.get("calibrating") is True
    statistics = record.get("statistics")
    stats: dict[str, list[Any]] = {}
    quality: set[str] = set()
    drifting = False
    for stat in statistics if isinstance(statistics, list) else []:
        if not isinstance(stat, Mapping):
            continue
        name = _text(stat.get("name"), 60)
        drifted = stat.get("drifted") is True
        key = f"{name}/{_text(stat.get('test'), 40)}"
        stats[key] = [_number(stat.get("value")), _number(stat.get("threshold")), drifted]
        if name in QUALITY_SIGNALS:
            if drifted:
                quality.add(QUALITY_SIGNALS[name])
        elif drifted and not calibrating:
            drifting = True
    kind = "silence" if record.get("kind") == "silence" else "window"
    if kind == "silence":
        quality.add("silent")
    reasons = record.get("reasons")
    point = DriftPoint(
        start_ms=_integer(record.get("window_start_ms")) or end,
        end_ms=end,
        kind=kind,
        frames=_integer(record.get("frame_count")) or 0,
        drift=record.get("drift") is True,
        calibrating=calibrating,
        reasons=[_text(r) for r in (reasons if isinstance(reasons, list) else [])],
        stats=stats,
    )
    return point, quality, drifting


class FleetState:
    """Every camera the view knows, updated from records; thread-safe."""

    def __init__(
        self,
        *,
        stale_s: float = 5.0,
        forget_s: float = 600.0,
        max_cameras: int = 1000,
        history_points: int = 600,
        history_windows: int = 120,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stale_s = stale_s
        self.forget_s = forget_s
        self.max_cameras = max_cameras
        self.history_points = history_points
        self.history_windows = history_windows
        self.clock = clock
        self.started_ms = _now_ms(clock)
        self.refused_cameras = 0  # records of new cameras beyond max_cameras
        self.bad_records: Counter[str] = Counter()
        self._cameras: dict[str, CameraView] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._lock = threading.Lock()

    # Records in ---------------------------------------------------------------------

    def _camera(self, camera_id: Any, kind: str) -> CameraView | None:
        """The camera's view, created on its first record, and marked changed (None:
        not a camera id, or the fleet is full)."""
        if not isinstance(camera_id, str) or not camera_id or len(camera_id) > MAX_CAMERA_ID:
            self.bad_records[kind] += 1
            return None
        camera = self._cameras.get(camera_id)
        if camera is None:
            if len(self._cameras) >= self.max_cameras:
                self.refused_cameras += 1
                return None
            camera = CameraView(
                camera_id,
                predictions=deque(maxlen=self.history_points),
                windows=deque(maxlen=self.history_windows),
                shadow_windows=deque(maxlen=self.history_windows),
            )
            self._cameras[camera_id] = camera
            self._removed.discard(camera_id)
        self._dirty.add(camera_id)
        return camera

    def apply_prediction(self, record: Mapping[str, Any]) -> None:
        now = _now_ms(self.clock)
        seq = _integer(record.get("seq"))
        with self._lock:
            if seq is None:
                self.bad_records["prediction"] += 1
                return
            camera = self._camera(record.get("camera_id"), "prediction")
            if camera is None:
                return
            published = _integer(record.get("published_ts_ms")) or now
            camera.fps_out.add(published)
            camera.last_activity_ms = now
            latency = record.get("latency")
            e2e = _number(latency.get("end_to_end_ms")) if isinstance(latency, Mapping) else None
            label = _text(record.get("label"), 100)
            score = _number(record.get("score")) or 0.0
            camera.predictions.append([published, label, round(score, 4), e2e, seq])
            if published < camera.published_ts_ms:
                return  # older than what the tile shows (a redelivery, a replay)
            top_k = record.get("top_k")
            camera.seq = seq
            camera.label = label
            camera.score = score
            camera.threshold = _number(record.get("threshold")) or 0.0
            camera.top = [
                (_text(c.get("label"), 100), _number(c.get("score")) or 0.0)
                for c in (top_k if isinstance(top_k, list) else [])[:3]
                if isinstance(c, Mapping)
            ]
            camera.model = model_ref(record.get("model"))
            camera.enrichment = _text(record.get("enrichment"), 20)
            camera.e2e_ms = e2e
            camera.capture_ts_ms = _integer(record.get("capture_ts_ms")) or 0
            camera.published_ts_ms = published
            camera.last_seen_ms = min(published, now)
            quality = camera.drift.quality
            if "silent" in quality and camera.capture_ts_ms > camera.drift.window_end_ms:
                quality.remove("silent")  # frames again since the silence

    def apply_drift(self, record: Mapping[str, Any]) -> None:
        now = _now_ms(self.clock)
        with self._lock:
            camera = self._camera(record.get("camera_id"), "drift")
            if camera is None:
                return
            camera.last_activity_ms = now
            point, quality, drifting = _drift_point(record, now)
            camera.windows.append(point)
            if point.end_ms < camera.drift.window_end_ms:
                return
            if point.kind == "silence":
                # Says nothing about drift: the last window's state stays, marked silent.
                camera.drift.quality = sorted({*camera.drift.quality, "silent"})
                camera.drift.window_end_ms = point.end_ms
                camera.drift.reasons = point.reasons
                return
            state = "drifting" if drifting else "calibrating" if point.calibrating else "ok"
            camera.drift = DriftView(
                state=state,
                reasons=point.reasons,
                quality=sorted(quality),
                window_end_ms=point.end_ms,
                frames=point.frames,
                model=model_ref(record.get("model")),
            )

    def apply_shadow(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        with self._lock:
            if kind not in ("pair", "summary"):
                self.bad_records["shadow"] += 1
                return
            camera = self._camera(record.get("camera_id"), "shadow")
            if camera is None:
                return
            camera.last_activity_ms = _now_ms(self.clock)
            candidate = model_ref(record.get("candidate"))
            shadow = camera.shadow
            if shadow is None or candidate != shadow.candidate:
                camera.shadow = shadow = ShadowView(candidate=candidate)
            if kind == "pair":
                agree = record.get("agree") is True
                shadow.recent.append(agree)
                seq = _integer(record.get("seq")) or 0
                if seq >= shadow.seq:
                    shadow.seq = seq
                    shadow.label = _text(record.get("candidate_label"), 100)
                    shadow.score = _number(record.get("candidate_score")) or 0.0
                    shadow.champion_label = _text(record.get("champion_label"), 100)
                    shadow.agree = agree
                return
            shadow.agreement_rate = _number(record.get("agreement_rate"))
            camera.shadow_windows.append(
                {
                    "end_ms": _integer(record.get("window_end_ms")) or 0,
                    "candidate": candidate,
                    "pairs": _integer(record.get("pairs")) or 0,
                    "agreement_rate": shadow.agreement_rate,
                    "latency_ratio": _number(record.get("latency_ratio")),
                }
            )

    def apply_dlq(self, key: str | None, headers: Mapping[str, bytes]) -> None:
        """A DLQ record, counted for the camera it was keyed by (its camera-id header
        without a key; '(no camera)' when neither names one)."""
        camera_id = key or headers.get("camera-id", b"").decode(errors="replace") or "(no camera)"
        kind = headers.get("error-kind", b"unknown").decode(errors="replace")[:60]
        message = headers.get("error-message", b"").decode(errors="replace")
        with self._lock:
            camera = self._camera(camera_id, "dlq")
            if camera is None:
                return
            camera.last_activity_ms = _now_ms(self.clock)
            camera.dlq_count += 1
            camera.dlq_kinds[kind] += 1
            camera.dlq_last = f"{kind}: {message}"[:MAX_TEXT]

    def apply_frame(self, camera_id: str, capture_ts_ms: int | None) -> None:
        """A frame of the frames topic: counts towards the camera's fps in."""
        now = _now_ms(self.clock)
        with self._lock:
            camera = self._camera(camera_id, "frame")
            if camera is None:
                return
            camera.frames += 1
            camera.fps_in.add(capture_ts_ms or now)
            camera.last_activity_ms = now

    def set_thumbnail(self, camera_id: str, jpeg: bytes) -> None:
        with self._lock:
            camera = self._camera(camera_id, "frame")
            if camera is not None:
                camera.thumbnail = jpeg
                camera.thumb_version += 1

    def set_registry(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The registered cameras (camstream.featurestore.registered_cameras rows): a
        registered camera shows before its first record; an unregistered one goes once
        it is no longer live (``prune``)."""
        routes: dict[str, str] = {}
        for row in rows:
            camera_id = row.get("camera_id")
            if isinstance(camera_id, str):
                model, version = str(row.get("model") or ""), str(row.get("model_version") or "")
                routes[camera_id] = f"{model}:{version}" if model and version else model
        with self._lock:
            for camera_id, route in routes.items():
                camera = self._cameras.get(camera_id) or self._camera(camera_id, "registry")
                if camera is not None and (camera.registered is not True or camera.route != route):
                    camera.registered, camera.route = True, route
                    self._dirty.add(camera_id)
            for camera_id, camera in self._cameras.items():
                if camera.registered and camera_id not in routes:
                    camera.registered, camera.route = False, ""
                    self._dirty.add(camera_id)

    # State out ----------------------------------------------------------------------

    def _status(self, camera: CameraView, now_ms: int) -> str:
        if camera.seq < 0:
            return "waiting"
        fps = camera.fps_out.rate(camera.last_seen_ms + 1000)  # its rate while it was live
        limit_ms = 1000 * max(self.stale_s, 3 / fps if fps > 0 else 0.0)
        return "live" if now_ms - camera.last_seen_ms <= limit_ms else "stale"

    def _tile(self, camera: CameraView, now_ms: int) -> dict[str, Any]:
        shadow = camera.shadow
        return {
            "camera": camera.camera_id,
            "status": self._status(camera, now_ms),
            "seq": camera.seq,
            "label": camera.label,
            "score": round(camera.score, 4),
            "threshold": round(camera.threshold, 4),
            "top": [[label, round(score, 4)] for label, score in camera.top],
            "model": camera.model,
            "route": camera.route,
            "registered": camera.registered,
            "enrichment": camera.enrichment,
            "fps_in": round(camera.fps_in.rate(now_ms), 1),
            "fps_out": round(camera.fps_out.rate(now_ms), 1),
            "e2e_ms": None if camera.e2e_ms is None else round(camera.e2e_ms, 1),
            "capture_ts_ms": camera.capture_ts_ms,
            "published_ts_ms": camera.published_ts_ms,
            "last_seen_ms": camera.last_seen_ms,
            "frames": camera.frames,
            "thumb": camera.thumb_version,
            "drift": {
                "state": camera.drift.state,
                "reasons": camera.drift.reasons,
                "quality": camera.drift.quality,
                "window_end_ms": camera.drift.window_end_ms,
                "model": camera.drift.model,
            },
            "dlq": {"count": camera.dlq_count, "last": camera.dlq_last},
            "shadow": None
            if shadow is None or not shadow.candidate or shadow.seq < 0
            else {
                "candidate": shadow.candidate,
                "label": shadow.label,
                "score": round(shadow.score, 4),
                "champion_label": shadow.champion_label,
                "agree": shadow.agree,
                "agreement_rate": shadow.agreement_rate,
                "recent_pairs": len(shadow.recent),
                "recent_disagreements": sum(1 for agree in shadow.recent if not agree),
            },
        }

    def take_changes(self) -> tuple[set[str], set[str]]:
        """The cameras changed, and the cameras removed, since the last call."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            removed, self._removed = self._removed, set()
            return dirty - removed, removed

    def camera_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._cameras)

    def tiles(self, camera_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The tiles of ``camera_ids`` (default: every camera) that exist."""
        now = _now_ms(self.clock)
        with self._lock:
            ids = list(self._cameras) if camera_ids is None else camera_ids
            return {cid: self._tile(self._cameras[cid], now) for cid in ids if cid in self._cameras}

    def thumbnail(self, camera_id: str) -> bytes | None:
        with self._lock:
            camera = self._cameras.get(camera_id)
            return camera.thumbnail if camera else None

    def detail(self, camera_id: str) -> dict[str, Any] | None:
        """The camera page's data: its tile, recent predictions, drift windows, DLQ
        kinds and shadow windows, oldest first."""
        now = _now_ms(self.clock)
        with self._lock:
            camera = self._cameras.get(camera_id)
            if camera is None:
                return None
            windows = sorted(camera.windows, key=lambda w: w.end_ms)
            return {
                "tile": self._tile(camera, now),
                "server_ms": now,
                "predictions": sorted(camera.predictions, key=lambda p: int(p[0])),
                "drift_windows": [w.as_json() for w in windows],
                "dlq_kinds": dict(camera.dlq_kinds.most_common()),
                "shadow_windows": list(camera.shadow_windows),
            }

    def summary(self) -> dict[str, Any]:
        now = _now_ms(self.clock)
        with self._lock:
            statuses = Counter(self._status(c, now) for c in self._cameras.values())
            return {
                "cameras": len(self._cameras),
                "live": statuses["live"],
                "stale": statuses["stale"],
                "waiting": statuses["waiting"],
                "since_ms": self.started_ms,
                "refused_cameras": self.refused_cameras,
            }

    def prune(self) -> set[str]:
        """Forget the cameras that left: unregistered and no longer live, or never
        registered and without a record for ``forget_s``. Returns their ids."""
        now = _now_ms(self.clock)
        with self._lock:
            gone = {
                cid
                for cid, c in self._cameras.items()
                if (c.registered is False and self._status(c, now) != "live")
                or (not c.registered and now - c.last_activity_ms > self.forget_s * 1000)
            }
            for cid in gone:
                del self._cameras[cid]
            self._removed |= gone
            self._dirty -= gone
            return gone
