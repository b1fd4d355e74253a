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
kept under ``<state_dir>/<camera>/``, written incrementally (streams.drift_state): each
frame is appended to the camera's journal, flushed by ``tick`` (every ``checkpoint_s``)
and by ``checkpoint()`` at shutdown; a window's close commits it (the baseline is
written once, when the camera calibrates).

Threads: a DriftMonitor is used from one thread at a time (the worker runs every call
on one dedicated thread) and never touches an event loop.
"""

from __future__ import annotations

import shutil
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import structlog
from prometheus_client import Gauge
from river.drift import ADWIN

from camstream.records import DriftRecord, ModelRef, StatisticTest
from streams.drift_state import CameraStore, Restored, Snapshot, camera_folders, read_legacy
from streams.drift_stats import Baseline, ReferenceProfile, Sample, Thresholds, calibrate, compare
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
    store: CameraStore | None = None  # None: state is not kept on disk
    # The model version answering for the camera and its reference profile's id ("" until
    # its first frame tells); a change recalibrates the camera, and its next record names
    # the version it was calibrated under before (``recalibrated_from``).
    model: ModelRef | None = None
    reference_id: str = ""
    recalibrated_from: ModelRef | None = None

    def snapshot(self, reference_id: str) -> Snapshot:
        return Snapshot(
            reference_profile_id=reference_id,
            freeze_last=self.freeze.last,
            freeze_run=self.freeze.run,
            last_capture_ms=self.last_capture_ms,
            last_arrival_ms=self.last_arrival_ms,
            silent=self.silent,
            baseline_id=self.baseline.id if self.baseline else None,
        )


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
        self.reference = reference  # the default model version's
        self.references: dict[str, ReferenceProfile] = {reference.id: reference}
        self._baselines: dict[str, Baseline] = {reference.id: reference.baseline()}
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
                self._upgrade(unquote(path.stem), path)
            for folder in camera_folders(state_dir):
                self._load(CameraStore.camera_of(folder))

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
        model: ModelRef | None = None,
        reference: ReferenceProfile | None = None,
    ) -> list[DriftRecord]:
        """Add one classified frame; returns the records of any window it closed.

        ``received_ms`` (the worker's clock when the frame arrived) keeps silence
        detection honest when camera clocks are off; by default the capture time.
        ``model`` and ``reference``: the version that classified the frame and its
        profile (default: the monitor's); a camera whose version changes starts its
        calibration again.
        """
        camera = self._camera(camera_id)
        self._route(camera_id, camera, model or self.model, reference or self.reference)
        arrival_ms = received_ms or capture_ts_ms
        self._seen(camera_id, camera, capture_ts_ms, arrival_ms)
        records: list[DriftRecord] = []
        window = camera.window
        if (
            window is not None
            and self.window_ms
            and capture_ts_ms >= window.start_ms + self.window_ms
        ):
            records.append(self._close(camera_id, camera))
        detector = self._adwin(camera)
        detector.update(float(score))  # type: ignore[no-untyped-call]
        frame = {
            "t": capture_ts_ms,
            "a": arrival_ms,
            "l": label,
            "s": float(score),
            "x": dict(stats),
            "d": int(bool(detector.drift_detected)),
        }
        self._add(camera_id, camera, frame)
        if camera.store is not None:
            camera.store.append(frame)
        window = camera.window
        assert window is not None
        if not self.window_ms and len(window) >= self.window_frames:
            records.append(self._close(camera_id, camera))
        return records

    def _route(
        self, camera_id: str, camera: CameraState, model: ModelRef, reference: ReferenceProfile
    ) -> None:
        """Follow the camera to the version now answering for it: a new reference
        profile drops its open window and calibration (they describe another model)."""
        if reference.id not in self.references:
            self.references[reference.id] = reference
            self._baselines[reference.id] = reference.baseline()
        if camera.reference_id == reference.id:
            camera.model = model
            return
        if camera.reference_id:
            camera.recalibrated_from = camera.model
            log.info(
                "drift.recalibrating",
                camera=camera_id,
                previous=str(camera.model),
                model=f"{model.name}:{model.version}",
            )
        camera.window = None
        camera.calibration = Sample()
        camera.baseline = None
        camera.history.clear()
        camera.adwin = None
        camera.model = model
        camera.reference_id = reference.id
        if camera.store is not None:
            camera.store.reference_id = reference.id
            camera.store.reset(camera.snapshot(reference.id))

    def _seen(self, camera_id: str, camera: CameraState, capture_ms: int, arrival_ms: int) -> None:
        camera.last_capture_ms = max(camera.last_capture_ms, capture_ms)
        camera.last_arrival_ms = max(camera.last_arrival_ms, arrival_ms)
        if camera.silent:
            camera.silent = False
            SILENT.labels(camera_id).set(0)

    def _add(self, camera_id: str, camera: CameraState, frame: dict[str, Any]) -> None:
        """One frame into the camera's state: from ``observe``, or replayed from its journal."""
        capture_ms, label, score, stats = int(frame["t"]), str(frame["l"]), frame["s"], frame["x"]
        self._seen(camera_id, camera, capture_ms, int(frame["a"]))
        if camera.window is None:
            camera.window = DriftWindow(capture_ms, capture_ms)
        window = camera.window
        window.start_ms = min(window.start_ms, capture_ms)
        window.end_ms = max(window.end_ms, capture_ms)
        window.sample.add(label, score, stats)
        window.runs.append(camera.freeze.update(stats))
        if camera.baseline is None and self.calibration_frames:
            camera.calibration.add(label, score, stats)
        window.adwin_changes += int(frame["d"])
        camera.history.append(float(score))

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
                if camera.store is not None:
                    camera.store.append({"silent": True})
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
        reference = self._reference_of(camera)
        base = camera.baseline or self._baselines[reference.id]
        tests = compare(window.sample, base, self.thresholds)
        if not calibrating:
            tests.append(
                StatisticTest.measured(
                    "confidence",
                    "adwin",
                    float(window.adwin_changes),  # changes ADWIN detected in the window
                    "ge",
                    1.0,
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
            model=camera.model or self.model,
            reference_profile_id=reference.id,
            calibrating=calibrating,
            baseline_id=None if calibrating else base.id,
            recalibrated_from=camera.recalibrated_from,
            statistics=[*tests, *quality],
            drift=bool(flagged),
            reasons=[_reason(t) for t in flagged],
            worker=self.worker_id,
        )
        camera.recalibrated_from = None
        calibrated = calibrating and len(camera.calibration) >= self.calibration_frames
        if calibrated:
            self._calibrate(camera_id, camera)
        self._export(record)
        if camera.store is not None:
            camera.store.commit(
                camera.snapshot(reference.id),
                window.sample.confidence,
                camera.history,
                calibration=window.sample if calibrating and not calibrated else None,
                baseline=camera.baseline if calibrated else None,
            )
        return record

    def _reference_of(self, camera: CameraState) -> ReferenceProfile:
        """The camera's reference profile (the default one before its first frame)."""
        return self.references.get(camera.reference_id, self.reference)

    def _calibrate(self, camera_id: str, camera: CameraState) -> None:
        frames = camera.calibration
        baseline_id = f"{camera_id}@{self._reference_of(camera).id}:{len(frames)}f"
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
            model=camera.model or self.model,
            reference_profile_id=self._reference_of(camera).id,
            calibrating=camera.baseline is None and self.calibration_frames > 0,
            baseline_id=camera.baseline.id if camera.baseline else None,
            recalibrated_from=None,
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
            camera = self.cameras[camera_id] = CameraState(store=self._store(camera_id))
        return camera

    def _store(self, camera_id: str) -> CameraStore | None:
        if self.state_dir is None:
            return None
        return CameraStore(self.state_dir, camera_id, self.reference.id, CONFIDENCE_HISTORY)

    def _adwin(self, camera: CameraState) -> ADWIN:
        if camera.adwin is None:
            camera.adwin = ADWIN(delta=self.thresholds.adwin_delta)  # type: ignore[no-untyped-call]
            for value in camera.history:
                camera.adwin.update(value)  # type: ignore[no-untyped-call]
        return camera.adwin

    def checkpoint(self) -> None:
        """Write every camera's frames since the last checkpoint to its journal."""
        for camera in self.cameras.values():
            if camera.store is not None:
                camera.store.flush()

    def _load(self, camera_id: str) -> None:
        store = self._store(camera_id)
        assert store is not None
        try:
            restored = store.load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "drift.state_unreadable", camera=camera_id, path=str(store.folder), error=str(exc)
            )
            shutil.rmtree(store.folder, ignore_errors=True)
            return
        self.cameras[camera_id] = self._restore(camera_id, store, restored)

    def _restore(self, camera_id: str, store: CameraStore, restored: Restored) -> CameraState:
        """The camera as it was, under the reference profile it was calibrated with;
        its first frame tells whether that is still the version answering for it (else
        it calibrates again: see ``_route``)."""
        snap = restored.snapshot
        camera = CameraState(
            freeze=FreezeTracker(snap.freeze_last, snap.freeze_run),
            last_capture_ms=snap.last_capture_ms,
            last_arrival_ms=snap.last_arrival_ms,
            silent=snap.silent,
            store=store,
            reference_id=snap.reference_profile_id,
        )
        store.reference_id = snap.reference_profile_id
        camera.baseline = restored.baseline
        camera.calibration = restored.calibration
        camera.history.extend(restored.history)
        for entry in restored.journal:
            if entry.get("silent"):
                camera.silent = True
            else:
                self._add(camera_id, camera, entry)
        return camera

    def _upgrade(self, camera_id: str, path: Path) -> None:
        """A state file of the previous layout: keep what it can tell (drift_state)."""
        store = self._store(camera_id)
        assert store is not None
        try:
            if not store.folder.exists():
                store.reset(read_legacy(path, self.reference.id))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("drift.state_unreadable", camera=camera_id, path=str(path), error=str(exc))
        path.unlink(missing_ok=True)


def _reason(test: StatisticTest) -> str:
    """``brightness ks=0.61 beyond 0.42 (p=3e-06 < 0.001)``: the value, its limits."""
    beyond = f" beyond {test.threshold:.3g}" if test.threshold is not None else ""
    p = ""
    if test.p_value is not None:
        p = f" (p={test.p_value:.2g} < {test.p_value_limit:.2g})"
    return f"{test.name} {test.test}={test.value:.3g}{beyond}{p}"


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
