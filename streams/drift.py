"""Per-camera drift windows and data-quality signals: frames in, drift records out.

Each camera's first ``calibration_frames`` frames under a reference profile become its
own baseline (a street camera and a bike-lane camera look different; that is not
drift). Until then its windows are compared with the model version's reference profile
for information, flagged by data-quality signals only, and marked ``calibrating``.
Afterwards each window is compared with the camera's baseline (streams.drift_stats),
ADWIN watches per-frame confidence, and streams.quality adds frozen, black,
over-exposed and silent-camera signals. The reference profile's id is named in every
record; a new model version (a new profile id) recalibrates every camera.

State survives a worker restart: each camera's open window, calibration frames,
baseline, freeze run, last-seen time and recent confidences (replayed into ADWIN) are
checkpointed to ``<state_dir>/<camera>.json`` by ``tick`` (every ``checkpoint_s``), at
each window's close, and by ``checkpoint()`` at shutdown.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import structlog
from prometheus_client import Gauge
from river.drift import ADWIN

from camstream.records import DriftRecord, ModelRef, StatisticTest
from streams.drift_stats import (
    Baseline,
    ReferenceProfile,
    Sample,
    Thresholds,
    baseline_from_json,
    baseline_to_json,
    calibrate,
    compare,
)
from streams.quality import FreezeTracker, QualityThresholds, silence_test, window_quality

if TYPE_CHECKING:
    from camstream.settings import Settings

__all__ = [
    "DRIFT_PUSH_SOURCE",
    "DriftMonitor",
    "DriftWindow",
    "ReferenceProfile",
    "Thresholds",
    "drift_feature_row",
]

log = structlog.get_logger(__name__)

DRIFT_PUSH_SOURCE = "camera_drift_push_source"
STATE_VERSION = 1
CONFIDENCE_HISTORY = 1000  # per-frame confidences kept to rebuild ADWIN after a restart

FLAG = Gauge("camstream_drift_flag", "1 when the camera's latest drift record drifted", ["camera"])
CALIBRATING = Gauge("camstream_drift_calibrating", "1 while the camera calibrates", ["camera"])
SILENT = Gauge("camstream_drift_silent", "1 while the camera is reported silent", ["camera"])
STATISTIC = Gauge(
    "camstream_drift_statistic", "Latest value of each window test", ["camera", "name", "test"]
)
WINDOW_END = Gauge(
    "camstream_drift_window_end_seconds", "Capture time that closed the last window", ["camera"]
)


@dataclass
class DriftWindow:
    """One camera's open window: its frames and each frame's identical-frame run."""

    start_ms: int
    end_ms: int = 0
    sample: Sample = field(default_factory=Sample)
    runs: list[int] = field(default_factory=list)
    adwin_changes: int = 0

    def __len__(self) -> int:
        return len(self.sample)

    def to_json(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "sample": self.sample.to_json(),
            "runs": self.runs,
            "adwin_changes": self.adwin_changes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DriftWindow:
        return cls(
            int(raw["start_ms"]),
            int(raw["end_ms"]),
            Sample.from_json(raw["sample"]),
            [int(x) for x in raw["runs"]],
            int(raw["adwin_changes"]),
        )


@dataclass
class CameraState:
    window: DriftWindow | None = None
    calibration: Sample = field(default_factory=Sample)
    baseline: Baseline | None = None
    freeze: FreezeTracker = field(default_factory=FreezeTracker)
    last_capture_ms: int = 0
    last_arrival_ms: int = 0
    silent: bool = False
    history: deque[float] = field(default_factory=lambda: deque(maxlen=CONFIDENCE_HISTORY))
    adwin: ADWIN | None = None
    dirty: bool = True


class DriftMonitor:
    """Per-camera windows for one worker: frames in, drift records out.

    The worker calls ``observe`` for every classified frame, ``tick`` about once a
    second (time windows, silent cameras, checkpoints) and ``checkpoint`` on shutdown;
    ``observe`` and ``tick`` return the records to publish.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        thresholds: Thresholds,
        window_frames: int,
        model: ModelRef,
        worker_id: str,
        *,
        window_ms: int = 0,
        calibration_frames: int | None = None,
        quality: QualityThresholds | None = None,
        state_dir: Path | None = None,
        checkpoint_s: float = 1.0,
    ) -> None:
        self.reference = reference
        self.reference_baseline = reference.baseline()
        self.thresholds = thresholds
        self.window_frames = window_frames
        self.window_ms = window_ms
        self.calibration_frames = (
            16 * window_frames if calibration_frames is None else calibration_frames
        )
        self.quality = quality or QualityThresholds()
        self.model = model
        self.worker_id = worker_id
        self.state_dir = state_dir
        self.checkpoint_ms = int(checkpoint_s * 1000)
        self.cameras: dict[str, CameraState] = {}
        self._first_tick_ms: int | None = None
        self._last_checkpoint_ms = 0
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(state_dir.glob("*.json")):
                self._load(unquote(path.stem), path)

    @classmethod
    def from_settings(cls, settings: Settings, model: ModelRef, worker_id: str) -> DriftMonitor:
        """The monitor the worker runs: every limit, window and path from settings."""
        return cls(
            ReferenceProfile.load(settings.reference_profile_path),
            Thresholds(
                psi=settings.drift_psi_threshold,
                js=settings.drift_js_threshold,
                ks_pvalue=settings.drift_ks_pvalue,
                confidence_shift=settings.drift_confidence_shift,
                ks_stride=settings.drift_ks_stride,
                label_bins=settings.drift_label_bins,
                calibration_margin=settings.drift_calibration_margin,
                adwin_delta=settings.drift_adwin_delta,
            ),
            settings.drift_window_frames,
            model,
            worker_id,
            window_ms=settings.drift_window_ms,
            calibration_frames=settings.drift_calibration_frames,
            quality=QualityThresholds(
                frozen_frames=settings.drift_frozen_frames,
                clipped_share=settings.drift_clipped_share,
                bad_frame_share=settings.drift_bad_frame_share,
                silence_s=settings.drift_silence_s,
            ),
            state_dir=settings.drift_state_dir or settings.worker_dir / "drift",
            checkpoint_s=settings.drift_checkpoint_s,
        )

    # Frames in ----------------------------------------------------------------------

    def observe(
        self,
        camera_id: str,
        capture_ts_ms: int,
        label: str,
        score: float,
        stats: dict[str, float],
        *,
        received_ms: int | None = None,
    ) -> list[DriftRecord]:
        """Add one classified frame; returns the records of any window it closed.

        ``received_ms`` (the worker's clock when the frame arrived) keeps silence
        detection honest when camera clocks are off; by default the capture time.
        """
        camera = self._camera(camera_id)
        camera.last_capture_ms = max(camera.last_capture_ms, capture_ts_ms)
        camera.last_arrival_ms = max(camera.last_arrival_ms, received_ms or capture_ts_ms)
        if camera.silent:
            camera.silent = False
            SILENT.labels(camera_id).set(0)
        records: list[DriftRecord] = []
        window = camera.window
        if (
            window is not None
            and self.window_ms
            and capture_ts_ms >= window.start_ms + self.window_ms
        ):
            records.append(self._close(camera_id, camera))
        if camera.window is None:
            camera.window = DriftWindow(capture_ts_ms, capture_ts_ms)
        window = camera.window
        window.start_ms = min(window.start_ms, capture_ts_ms)
        window.end_ms = max(window.end_ms, capture_ts_ms)
        window.sample.add(label, score, stats)
        window.runs.append(camera.freeze.update(stats))
        if camera.baseline is None and self.calibration_frames:
            camera.calibration.add(label, score, stats)
        detector = self._adwin(camera)
        detector.update(float(score))  # type: ignore[no-untyped-call]
        if detector.drift_detected:
            window.adwin_changes += 1
        camera.history.append(float(score))
        camera.dirty = True
        if not self.window_ms and len(window) >= self.window_frames:
            records.append(self._close(camera_id, camera))
        return records

    def tick(self, now_ms: int) -> list[DriftRecord]:
        """Time-driven records: time windows left open by a quiet camera, silent cameras.

        A camera counts as silent only after ``silence_s`` without frames measured from
        this process's first tick, so a restarted worker does not report every camera.
        """
        if self._first_tick_ms is None:
            self._first_tick_ms = now_ms
        records: list[DriftRecord] = []
        for camera_id, camera in self.cameras.items():
            window = camera.window
            if (
                window is not None
                and self.window_ms
                and now_ms >= window.start_ms + 2 * self.window_ms
            ):
                records.append(self._close(camera_id, camera))
            since = max(camera.last_arrival_ms, self._first_tick_ms)
            silent_s = (now_ms - since) / 1000.0
            if not camera.silent and silent_s > self.quality.silence_s:
                camera.silent = True
                camera.dirty = True
                records.append(self._silence(camera_id, camera, now_ms, silent_s))
        if self.state_dir is not None and now_ms - self._last_checkpoint_ms >= self.checkpoint_ms:
            self.checkpoint()
            self._last_checkpoint_ms = now_ms
        return records

    # Records out --------------------------------------------------------------------

    def _close(self, camera_id: str, camera: CameraState) -> DriftRecord:
        window = camera.window
        assert window is not None
        camera.window = None
        calibrating = camera.baseline is None and self.calibration_frames > 0
        base = camera.baseline or self.reference_baseline
        tests = compare(window.sample, base, self.thresholds)
        if not calibrating:
            tests.append(
                StatisticTest(
                    name="confidence",
                    test="adwin",
                    value=float(window.adwin_changes),
                    threshold=0.0,
                    drifted=window.adwin_changes > 0,
                    baseline=base.kind,
                )
            )
        quality = window_quality(window.runs, window.sample.stats, self.quality)
        flagged = [t for t in quality if t.drifted]
        if not calibrating:
            flagged = [t for t in tests if t.drifted] + flagged
        record = DriftRecord(
            camera_id=camera_id,
            window_start_ms=window.start_ms,
            window_end_ms=window.end_ms,
            frame_count=len(window),
            model=self.model,
            reference_profile_id=self.reference.id,
            calibrating=calibrating,
            baseline_id=None if calibrating else base.id,
            statistics=[*tests, *quality],
            drift=bool(flagged),
            reasons=[_reason(t) for t in flagged],
            worker=self.worker_id,
        )
        if calibrating and len(camera.calibration) >= self.calibration_frames:
            self._calibrate(camera_id, camera)
        self._export(record)
        camera.dirty = True
        self._save(camera_id, camera)
        return record

    def _calibrate(self, camera_id: str, camera: CameraState) -> None:
        frames = camera.calibration
        baseline_id = f"{camera_id}@{self.reference.id}:{len(frames)}f"
        camera.baseline = calibrate(baseline_id, frames, self.window_frames, self.thresholds)
        camera.calibration = Sample()
        log.debug("drift.calibrated", camera=camera_id, baseline=baseline_id, frames=len(frames))

    def _silence(
        self, camera_id: str, camera: CameraState, now_ms: int, silent_s: float
    ) -> DriftRecord:
        test = silence_test(silent_s, self.quality)
        SILENT.labels(camera_id).set(1)
        record = DriftRecord(
            kind="silence",
            camera_id=camera_id,
            window_start_ms=camera.last_capture_ms or now_ms,
            window_end_ms=now_ms,
            frame_count=0,
            model=self.model,
            reference_profile_id=self.reference.id,
            calibrating=camera.baseline is None and self.calibration_frames > 0,
            baseline_id=camera.baseline.id if camera.baseline else None,
            statistics=[test],
            drift=True,
            reasons=[_reason(test)],
            worker=self.worker_id,
        )
        FLAG.labels(camera_id).set(1)
        return record

    def _export(self, record: DriftRecord) -> None:
        camera = record.camera_id
        FLAG.labels(camera).set(int(record.drift))
        CALIBRATING.labels(camera).set(int(record.calibrating))
        WINDOW_END.labels(camera).set(record.window_end_ms / 1000.0)
        for test in record.statistics:
            STATISTIC.labels(camera, test.name, test.test).set(test.value)

    # State --------------------------------------------------------------------------

    def _camera(self, camera_id: str) -> CameraState:
        camera = self.cameras.get(camera_id)
        if camera is None:
            camera = self.cameras[camera_id] = CameraState()
        return camera

    def _adwin(self, camera: CameraState) -> ADWIN:
        if camera.adwin is None:
            camera.adwin = ADWIN(delta=self.thresholds.adwin_delta)  # type: ignore[no-untyped-call]
            for value in camera.history:
                camera.adwin.update(value)  # type: ignore[no-untyped-call]
        return camera.adwin

    def checkpoint(self) -> None:
        """Save every camera whose state changed since its last save."""
        for camera_id, camera in self.cameras.items():
            if camera.dirty:
                self._save(camera_id, camera)

    def _path(self, camera_id: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{quote(camera_id, safe='')}.json"

    def _save(self, camera_id: str, camera: CameraState) -> None:
        if self.state_dir is None:
            return
        state = {
            "version": STATE_VERSION,
            "reference_profile_id": self.reference.id,
            "window": camera.window.to_json() if camera.window else None,
            "calibration": camera.calibration.to_json(),
            "baseline": baseline_to_json(camera.baseline) if camera.baseline else None,
            "freeze": {"last": camera.freeze.last, "run": camera.freeze.run},
            "last_capture_ms": camera.last_capture_ms,
            "last_arrival_ms": camera.last_arrival_ms,
            "silent": camera.silent,
            "history": list(camera.history),
        }
        path = self._path(camera_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, separators=(",", ":")))
        tmp.replace(path)
        camera.dirty = False

    def _load(self, camera_id: str, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
            camera = CameraState(
                freeze=FreezeTracker(raw["freeze"]["last"], int(raw["freeze"]["run"])),
                last_capture_ms=int(raw["last_capture_ms"]),
                last_arrival_ms=int(raw["last_arrival_ms"]),
                silent=bool(raw["silent"]),
                dirty=False,
            )
            camera.history.extend(float(x) for x in raw["history"])
            if (
                raw.get("version") == STATE_VERSION
                and raw["reference_profile_id"] == self.reference.id
            ):
                camera.window = DriftWindow.from_json(raw["window"]) if raw["window"] else None
                camera.calibration = Sample.from_json(raw["calibration"])
                camera.baseline = baseline_from_json(raw["baseline"]) if raw["baseline"] else None
            else:  # another model version: calibrate again
                camera.history.clear()
                camera.dirty = True
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("drift.state_unreadable", camera=camera_id, path=str(path), error=str(exc))
            return
        self.cameras[camera_id] = camera


def _reason(test: StatisticTest) -> str:
    p = f" (p={test.p_value:.2g})" if test.p_value is not None else ""
    return f"{test.name} {test.test}={test.value:.3g} beyond {test.threshold:.3g}{p}"


def drift_feature_row(record: DriftRecord) -> dict[str, Any]:
    """The camera's drift state as a row for Feast's camera_drift_push_source."""
    return {
        "camera_id": record.camera_id,
        "event_timestamp": datetime.fromtimestamp(record.window_end_ms / 1000, tz=UTC),
        "drift": record.drift,
        "drift_reasons": "; ".join(record.reasons),
        "drift_window_end_ms": record.window_end_ms,
        "reference_profile_id": record.reference_profile_id,
    }
