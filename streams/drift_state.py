"""One camera's drift state on disk, written incrementally (streams.drift's persistence).

Writing a camera's whole state every second (its baseline and calibration frames
included, hundreds of kB) is what this replaces. Per camera, in ``<state_dir>/<id>/``
(the id URL-quoted):

    journal.jsonl      appended at each checkpoint: a header naming the epoch, then one
                       line per frame of the open window (and silence events)
    snapshot.json      replaced at each window close: freeze run, last-seen times,
                       silent flag, the calibrated baseline's id
    history.jsonl      appended at each window close: the window's confidences (replayed
                       into ADWIN after a restart); rewritten when twice what is kept
    calibration.jsonl  appended at each window close while calibrating: its frames;
                       removed once the camera is calibrated
    baseline.json      written once, when the camera calibrates

A window close is one *epoch*: lines are tagged with their epoch, the snapshot (replaced
atomically) is the commit point, and the journal then starts again with a header naming
the new epoch. After a crash anywhere in between, lines of an epoch the snapshot has
not reached are ignored (those frames are still in the old journal), and a journal of
another epoch than the snapshot's is stale. Appends are flushed to the operating system,
not fsynced: like the whole-state file before, what survives a killed worker.

A file of the previous layout (``<state_dir>/<id>.json``, version 1) keeps the freeze
run, last-seen times and silent flag; the camera calibrates again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from streams.drift_stats import Baseline, Sample, baseline_from_json, baseline_to_json

STATE_VERSION = 2
JOURNAL = "journal.jsonl"
SNAPSHOT = "snapshot.json"
HISTORY = "history.jsonl"
CALIBRATION = "calibration.jsonl"
BASELINE = "baseline.json"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _append(path: Path, lines: Iterable[str]) -> None:
    with path.open("a") as out:
        out.write("".join(f"{line}\n" for line in lines))


def _lines(path: Path) -> list[Any]:
    """The JSON lines of an append-only file, up to a line torn by a crash mid-append."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


@dataclass
class Snapshot:
    """A camera's state at its last window close (epoch), beyond its windows' frames."""

    reference_profile_id: str
    epoch: int = 0
    freeze_last: float | None = None
    freeze_run: int = 0
    last_capture_ms: int = 0
    last_arrival_ms: int = 0
    silent: bool = False
    baseline_id: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Snapshot:
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"drift state version {raw.get('version')!r}")
        last, baseline_id = raw["freeze_last"], raw["baseline_id"]
        return cls(
            reference_profile_id=str(raw["reference_profile_id"]),
            epoch=int(raw["epoch"]),
            freeze_last=None if last is None else float(last),
            freeze_run=int(raw["freeze_run"]),
            last_capture_ms=int(raw["last_capture_ms"]),
            last_arrival_ms=int(raw["last_arrival_ms"]),
            silent=bool(raw["silent"]),
            baseline_id=None if baseline_id is None else str(baseline_id),
        )


@dataclass
class Restored:
    """A camera's state as read back: the snapshot, what its closed windows left, and the
    journal of its open window (frame entries and ``{"silent": true}`` events)."""

    snapshot: Snapshot
    baseline: Baseline | None = None
    calibration: Sample = field(default_factory=Sample)
    history: list[float] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)


class CameraStore:
    """The files of one camera: ``append`` per frame, ``flush`` per checkpoint, ``commit``
    per window close, ``load`` at start. Used from one thread."""

    def __init__(self, state_dir: Path, camera_id: str, reference_id: str, keep: int) -> None:
        self.folder = state_dir / quote(camera_id, safe="")
        self.reference_id = reference_id
        self.keep = keep  # confidences the history keeps
        self.epoch = 0
        self._pending: list[str] = []
        self._history_values = 0

    @staticmethod
    def camera_of(folder: Path) -> str:
        return unquote(folder.name)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Queue one journal line; the next ``flush`` writes it."""
        self._pending.append(_dumps(entry))

    def flush(self) -> None:
        if not self._pending:
            return
        if not (self.folder / JOURNAL).exists():
            self._start_journal()
        _append(self.folder / JOURNAL, self._pending)
        self._pending.clear()

    def commit(
        self,
        snapshot: Snapshot,
        confidences: Sequence[float],
        history: Sequence[float],
        calibration: Sample | None = None,
        baseline: Baseline | None = None,
    ) -> None:
        """Close an epoch: the closed window's confidences appended (the history file is
        rewritten from ``history`` once it holds twice what is kept), its frames appended
        while the camera calibrates, the baseline written when just calibrated, then the
        snapshot, and the journal starts again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        epoch = snapshot.epoch = self.epoch + 1
        self._pending.clear()  # the closed window's frames: the commit holds them now
        if self._history_values + len(confidences) > 2 * self.keep:
            kept = [float(x) for x in history]
            _replace(self.folder / HISTORY, _dumps({"epoch": epoch, "scores": kept}) + "\n")
            self._history_values = len(kept)
        elif confidences:
            line = {"epoch": epoch, "scores": [float(x) for x in confidences]}
            _append(self.folder / HISTORY, [_dumps(line)])
            self._history_values += len(confidences)
        if calibration is not None and len(calibration):
            line = {"epoch": epoch, "frames": calibration.to_json()}
            _append(self.folder / CALIBRATION, [_dumps(line)])
        if baseline is not None:
            _replace(self.folder / BASELINE, _dumps(baseline_to_json(baseline)))
        state = {"version": STATE_VERSION, **dataclasses.asdict(snapshot)}
        _replace(self.folder / SNAPSHOT, _dumps(state))
        self.epoch = epoch
        self._start_journal()
        if snapshot.baseline_id is not None:
            (self.folder / CALIBRATION).unlink(missing_ok=True)

    def reset(self, snapshot: Snapshot) -> None:
        """Start the camera's files again from ``snapshot`` (a new reference profile)."""
        for name in (HISTORY, CALIBRATION, BASELINE):
            (self.folder / name).unlink(missing_ok=True)
        self._history_values = 0
        snapshot.baseline_id = None
        self.commit(snapshot, [], [])

    def _start_journal(self) -> None:
        """Truncate the journal to its header: not atomic, as a journal cut short by a
        crash here (no header) reads as empty, which is what it is after a commit."""
        self.folder.mkdir(parents=True, exist_ok=True)
        header = {"epoch": self.epoch, "reference_profile_id": self.reference_id}
        (self.folder / JOURNAL).write_text(_dumps(header) + "\n")

    def load(self) -> Restored:
        """The camera's state as last written; raises OSError, ValueError, KeyError or
        TypeError when a file is unreadable."""
        path = self.folder / SNAPSHOT
        journal = _lines(self.folder / JOURNAL)
        if path.exists():
            snapshot = Snapshot.from_json(json.loads(path.read_text()))
        else:  # no window closed yet: the journal's header names the profile
            first = journal[0] if journal else {}
            snapshot = Snapshot(str(first.get("reference_profile_id", "")))
        self.epoch = snapshot.epoch
        restored = Restored(snapshot)
        if journal and int(journal[0]["epoch"]) == snapshot.epoch:
            restored.journal = journal[1:]
        for line in _lines(self.folder / HISTORY):
            if int(line["epoch"]) <= snapshot.epoch:
                restored.history += [float(x) for x in line["scores"]]
        self._history_values = len(restored.history)
        if snapshot.baseline_id is not None:
            restored.baseline = baseline_from_json(json.loads((self.folder / BASELINE).read_text()))
            if restored.baseline.id != snapshot.baseline_id:
                raise ValueError(f"baseline {restored.baseline.id} is not {snapshot.baseline_id}")
            return restored
        calibration = restored.calibration
        for line in _lines(self.folder / CALIBRATION):
            if int(line["epoch"]) <= snapshot.epoch:
                frames = Sample.from_json(line["frames"])
                calibration.labels += frames.labels
                calibration.confidence += frames.confidence
                for name, values in frames.stats.items():
                    calibration.stats.setdefault(name, []).extend(values)
        return restored


def camera_folders(state_dir: Path) -> list[Path]:
    return sorted(path for path in state_dir.iterdir() if path.is_dir())


def read_legacy(path: Path, reference_id: str) -> Snapshot:
    """What a file of the previous layout keeps across the upgrade (see above)."""
    raw = json.loads(path.read_text())
    last = raw["freeze"]["last"]
    return Snapshot(
        reference_profile_id=reference_id,
        freeze_last=None if last is None else float(last),
        freeze_run=int(raw["freeze"]["run"]),
        last_capture_ms=int(raw["last_capture_ms"]),
        last_arrival_ms=int(raw["last_arrival_ms"]),
        silent=bool(raw["silent"]),
    )
