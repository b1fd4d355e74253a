"""The cameras one producer runs, changed while it runs.

``Fleet`` holds a ``CameraWorker`` thread per camera, each with a stop event of its
own, so that a camera can start or stop without touching the others. ``reconcile``
brings it to a wanted list: new cameras start, removed ones stop, and a camera whose
producer fields changed (source, fps, size, ...) restarts; a change of metadata or
routing alone (``camstream promote``) leaves its thread alone.

``registry_cameras`` reads the wanted list from the Feast repo's offline camera rows
(`camstream cameras add --source ...` writes them): `camstream produce --from-registry`
polls it, and the producer of `camstream up` is started so.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from camstream.cameras import CameraConfigError, CameraSpec, camera_from_entry, check_source
from camstream.settings import Settings
from producers.delivery import FramePublisher
from producers.stats import CAMERA_UP, CameraCounters, ProducerStats

if TYPE_CHECKING:
    from producers.producer import CameraWorker  # it imports this module

log = structlog.get_logger(__name__)

# What a producer thread depends on; the rest of a CameraSpec is the worker's.
PRODUCER_FIELDS = frozenset(
    {"source", "fps", "loop", "max_width", "max_height", "jpeg_quality", "backpressure"}
)


def producer_fields(camera: CameraSpec) -> dict[str, Any]:
    return camera.model_dump(include=set(PRODUCER_FIELDS))


def registry_cameras(repo: Path) -> list[CameraSpec]:
    """The enabled cameras registered in the Feast repo with a source, sorted by id.
    A row that is not a valid camera is logged and left out; the others still run."""
    from camstream.featurestore import PRODUCER_COLUMNS, registered_cameras

    cameras = []
    for row in registered_cameras(repo):
        if not row.get("source"):
            continue  # registered before sources were kept, or without one
        entry = {"id": row["camera_id"]}
        entry.update({c: row[c] for c in PRODUCER_COLUMNS if row.get(c) not in (None, "")})
        try:
            camera = camera_from_entry(entry, row["camera_id"])
        except CameraConfigError as exc:
            log.warning("fleet.camera_invalid", camera=row["camera_id"], error=str(exc))
            continue
        if camera.enabled:
            cameras.append(camera)
    return cameras


class Fleet:
    """The running cameras of one producer (its ``stats`` gain a counter per camera
    started). Called from one thread (the producer's loop)."""

    def __init__(
        self,
        settings: Settings,
        publisher: FramePublisher,
        stats: ProducerStats,
        *,
        max_frames: int | None = None,
        pace: bool = True,
        record_seqs: bool = False,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.stats = stats
        self.max_frames = max_frames
        self.pace = pace
        self.record_seqs = record_seqs
        self._running: dict[str, tuple[CameraWorker, threading.Event]] = {}
        self._stopping: list[CameraWorker] = []
        self._refused: dict[str, dict[str, Any]] = {}  # logged once per spec

    @property
    def cameras(self) -> list[str]:
        return sorted(self._running)

    def any_alive(self) -> bool:
        return any(worker.is_alive() for worker, _ in self._running.values())

    def start(self, camera: CameraSpec) -> None:
        from producers.producer import CameraWorker

        counters = CameraCounters(camera.id, record_seqs=self.record_seqs)
        self.stats.cameras[camera.id] = counters
        halt = threading.Event()
        worker = CameraWorker(
            camera,
            self.publisher,
            counters,
            self.settings,
            halt,
            self.max_frames,
            self.pace,
        )
        self._running[camera.id] = (worker, halt)
        worker.start()

    def stop_camera(self, camera_id: str) -> None:
        """Stop one camera's thread (it ends within a read; not waited for here), and
        drop its up gauge: a removed camera is not a camera down."""
        worker, halt = self._running.pop(camera_id)
        halt.set()
        self._stopping.append(worker)
        CAMERA_UP.remove(camera_id)

    def reconcile(self, wanted: list[CameraSpec]) -> None:
        """Start, stop and restart cameras so that exactly ``wanted`` run."""
        by_id = {c.id: c for c in wanted}
        for camera_id in [c for c in self._running if c not in by_id]:
            self.stop_camera(camera_id)
            log.info("fleet.camera_removed", camera=camera_id)
        for camera_id, camera in by_id.items():
            running = self._running.get(camera_id)
            if running is not None:
                if producer_fields(running[0].camera) == producer_fields(camera):
                    continue
                self.stop_camera(camera_id)
                log.info("fleet.camera_changed", camera=camera_id, **producer_fields(camera))
            if not self._startable(camera):
                continue
            self.start(camera)
            log.info("fleet.camera_added", camera=camera_id, source=camera.source)
        self._stopping = [w for w in self._stopping if w.is_alive()]

    def _startable(self, camera: CameraSpec) -> bool:
        try:
            check_source(camera)
        except CameraConfigError as exc:
            if self._refused.get(camera.id) != producer_fields(camera):
                self._refused[camera.id] = producer_fields(camera)
                log.error("fleet.camera_refused", camera=camera.id, error=str(exc))
            return False
        self._refused.pop(camera.id, None)
        return True

    def halt(self, timeout_s: float = 2.0) -> None:
        """Stop every camera and wait up to ``timeout_s`` for their threads in all."""
        workers = [*self._stopping]
        for worker, halt in self._running.values():
            halt.set()
            workers.append(worker)
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.join(timeout=max(deadline - time.monotonic(), 0.05))
