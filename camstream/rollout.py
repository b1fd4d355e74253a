"""Live rollouts: a model version goes onto running cameras, and back, with no failed
request. `camstream promote` (after the gate) and `camstream rollback` run one path:

1. lock: one rollout at a time per model repository (fcntl on ``<repo>/.rollout.lock``);
2. versions in use: each registered camera's route (Feast camera metadata: "" model is
   ``settings.model_name``, "" version the model's default, ``serving.json``) and its
   shadow, plus every model's default version;
3. load: the model's ``version_policy`` becomes in-use + new and Triton loads it beside
   the versions serving (Triton 2.51 reloads every version of a model whose config
   changed; the old instances answer until the new ones are ready: measured, no failed
   request); then each wanted version must be ready;
4. canary (promote): up to 32 of the version's own evaluation images, preprocessed as
   the worker does, through the live server pinned to the new version: each must give
   the offline top-1, with its probability within a tolerance (training-serving skew);
5. switch: Feast camera routes and/or the model's serving.json;
6. drain: until Triton's statistics show no new execution of each version that left use
   for ``2 * feature_cache_ttl_s + 2`` s (workers re-read routes every TTL);
7. drop: the policy becomes the versions in use; a model nobody routes to is unloaded;
8. watch (promote): the new version's error rate and mean latency for ``watch_s``;
   crossing a limit rolls back by the same path (``auto_rollback``).

A failure before the switch puts the repository back as it was (config, labels,
serving.json; a version folder this promote installed is removed), so the versions
serving never stopped. Every outcome goes to ``<registry>/rollouts.jsonl``, a refusal
also to the registry's history. The plan (what is in use, what a switch changes, what
a rollback undoes, the canary, drain and watch verdicts) is plain functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.errors import CamstreamError, ConfigError, ServiceError

if TYPE_CHECKING:
    from feast import FeatureStore

    from camstream.registry import Registry
    from camstream.settings import Settings

LOCK_FILE = ".rollout.lock"
HISTORY_FILE = "rollouts.jsonl"
CANARY_IMAGES = 32
DRAIN_TIMEOUT_S = 60.0
WATCH_MIN_REQUESTS = 5  # a mean latency over fewer requests is not judged
CHAMPION = "champion"


class RolloutRefused(CamstreamError):
    """A rollout that did not happen or was undone; ``reason`` starts with its step
    (lock, load, canary, watch, plan) and the message says what still serves."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The plan: routes, versions in use, switches ---------------------------------------


@dataclass(frozen=True)
class Route:
    """A camera's route as Feast holds it: "" model / version mean the defaults."""

    model: str = ""
    version: str = ""

    def columns(self) -> dict[str, str]:
        return {"model": self.model, "model_version": self.version}


@dataclass(frozen=True)
class Fleet:
    """What answers for whom: cameras' routes and shadows, models' default versions."""

    routes: Mapping[str, Route]
    defaults: Mapping[str, int | None]
    default_model: str
    shadows: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        defaults: Mapping[str, int | None],
        default_model: str,
    ) -> Fleet:
        """From ``featurestore.registered_cameras`` rows (routing columns may be absent)."""
        routes, shadows = {}, {}
        for row in rows:
            camera = str(row["camera_id"])
            routes[camera] = Route(str(row.get("model") or ""), str(row.get("model_version") or ""))
            shadow = parse_ref(str(row.get("shadow_model") or ""))
            if shadow is not None and float(row.get("shadow_fraction") or 0.0) > 0:
                shadows[camera] = shadow
        return cls(routes, dict(defaults), default_model, shadows)

    def resolve(self, camera: str) -> tuple[str, int | None]:
        """The model and version that answer for ``camera``."""
        route = self.routes[camera]
        model = route.model or self.default_model
        pinned = modelrepo.version_number(route.version)  # "" or junk: the default
        return model, pinned if pinned is not None else self.defaults.get(model)

    def label(self, camera: str) -> str:
        model, version = self.resolve(camera)
        return f"{model}:{version if version is not None else '-'}"

    def in_use(self) -> dict[str, set[int]]:
        """Versions in use per model: cameras' routes and shadows, models' defaults."""
        used: dict[str, set[int]] = {m: {v} for m, v in self.defaults.items() if v is not None}
        pairs = [self.resolve(c) for c in self.routes] + list(self.shadows.values())
        for model, version in pairs:
            if version is not None:
                used.setdefault(model, set()).add(version)
        return used

    def routed_models(self) -> set[str]:
        """Models some camera (or shadow) routes to, and the workers' default model."""
        return (
            {self.resolve(c)[0] for c in self.routes}
            | {m for m, _ in self.shadows.values()}
            | {self.default_model}
        )

    def apply(self, switch: Switch) -> Fleet:
        defaults = dict(self.defaults)
        if switch.default is not None:
            defaults[switch.model] = switch.default
        return replace(self, routes={**self.routes, **switch.routes}, defaults=defaults)


@dataclass(frozen=True)
class Switch:
    """A change of routing: ``model``'s new default (None: unchanged) and cameras' new
    routes."""

    model: str
    default: int | None = None
    routes: Mapping[str, Route] = field(default_factory=dict)


def parse_ref(ref: str) -> tuple[str, int] | None:
    """``NAME:VERSION`` -> (name, version); None for "" or a ref without a number."""
    name, _, number = ref.partition(":")
    version = modelrepo.version_number(number)
    return (name, version) if name and version is not None else None


def plan_promote(fleet: Fleet, model: str, version: int, cameras: Sequence[str] | None) -> Switch:
    """The switch that makes ``model:version`` answer: for ``cameras`` only (pinned), or
    for the whole model (its default, and every camera pinned to another version of it
    re-pinned). ConfigError names cameras that are not registered."""
    if cameras:
        unknown = sorted(set(cameras) - set(fleet.routes))
        if unknown:
            known = ", ".join(sorted(fleet.routes)) or "none"
            raise ConfigError(
                f"camera(s) {', '.join(unknown)} are not registered (registered: {known}); "
                "add them with `camstream cameras add`"
            )
        return Switch(model, None, {c: Route(model, str(version)) for c in cameras})
    repinned = {
        camera: replace(route, version=str(version))
        for camera, route in fleet.routes.items()
        if (route.model or fleet.default_model) == model and route.version not in ("", str(version))
    }
    return Switch(model, version, repinned)


def undo_switch(before: Fleet, switch: Switch) -> Switch:
    """The switch that puts back what ``switch`` changed in ``before``."""
    default = before.defaults.get(switch.model) if switch.default is not None else None
    return Switch(switch.model, default, {c: before.routes[c] for c in switch.routes})


def switched_cameras(before: Fleet, after: Fleet) -> list[str]:
    """Cameras answered by another model or version after the switch."""
    return sorted(
        c for c in after.routes if c not in before.routes or before.resolve(c) != after.resolve(c)
    )


def leaving(before: Fleet, after: Fleet) -> dict[str, list[int]]:
    """Versions in use before and not after, per model: what the drain waits for."""
    used = after.in_use()
    gone = {m: sorted(v - used.get(m, set())) for m, v in before.in_use().items()}
    return {m: v for m, v in gone.items() if v}


def previous_of(before: Fleet, switch: Switch) -> dict[str, Any]:
    """The record's ``previous``: each switched camera's "M:V" and the old default."""
    previous: dict[str, Any] = {c: before.label(c) for c in switch.routes}
    if switch.default is not None:
        previous["default"] = before.defaults.get(switch.model)
    return previous


# History: rollouts.jsonl and what a rollback undoes ---------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """rollouts.jsonl's records, oldest first (a torn last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                records.append(value)
    return records


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def rollback_target(
    records: Sequence[Mapping[str, Any]], model: str, cameras: Sequence[str] | None
) -> tuple[Mapping[str, Any], Switch]:
    """The last promote of ``model`` not yet undone (for ``cameras``: the last one that
    switched all of them) and the switch that undoes what remains of it.

    A rollback record names the promote it undoes (``undoes``) and the cameras it put
    back (null: all that remained, and the default). ConfigError when there is nothing
    to roll back, naming why."""
    undone: dict[str, set[str] | None] = {}  # promote id -> cameras put back; None: all
    for record in records:
        if record.get("action") in ("rollback", "auto_rollback") and record.get("undoes"):
            key = str(record["undoes"])
            if record.get("cameras") is None or undone.get(key, set()) is None:
                undone[key] = None
            else:
                undone[key] = (undone.get(key) or set()) | set(record["cameras"])
    for record in reversed(records):
        if record.get("action") != "promote" or record.get("model") != model:
            continue
        done = undone.get(str(record.get("id")), set())
        if done is None:
            continue
        undo = record.get("undo") or {}
        routes = {
            c: Route(str(r.get("model", "")), str(r.get("model_version", "")))
            for c, r in (undo.get("routes") or {}).items()
            if c not in done
        }
        default = undo.get("default")
        default_pending = record.get("cameras") is None
        if cameras:
            if set(cameras) <= set(routes):
                return record, Switch(model, None, {c: routes[c] for c in cameras})
            continue
        if not routes and not default_pending:
            continue
        if default_pending and default is None:
            raise ConfigError(
                f"the last promote of {model} ({model}:{record.get('version')}) made its first "
                "default version: there is no previous version to roll back to"
            )
        return record, Switch(model, int(default) if default is not None else None, routes)
    which = f" for camera(s) {', '.join(cameras)}" if cameras else ""
    raise ConfigError(
        f"no promote of {model}{which} to roll back in the rollout history (a camera that "
        f"follows the model's default rolls back with the model: `camstream rollback {model}`)"
    )


# Canary, drain and watch verdicts ----------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """How the live answers compared with the offline evaluation."""

    n: int
    tolerance: float
    max_delta: float
    mismatches: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return self.n > 0 and not self.mismatches

    def figures(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "tolerance": self.tolerance,
            "max_delta": round(self.max_delta, 6),
            "mismatches": len(self.mismatches),
            "examples": self.mismatches[:5],
        }

    def summary(self) -> str:
        agree = self.n - len(self.mismatches)
        head = f"{self.n} images, {agree} agree (max |dp| {self.max_delta:.4f})"
        if not self.mismatches:
            return head
        shown = "; ".join(
            f"{m['path']}: offline {m['expected']} {m['score']:.3f}, "
            f"live {m['got']} {m['prob']:.3f}"
            for m in self.mismatches[:3]
        )
        return f"{head}: {shown}"


def pick_canary(
    rows: Sequence[Mapping[str, Any]], limit: int = CANARY_IMAGES
) -> list[Mapping[str, Any]]:
    """Up to ``limit`` rows, taken in turn from each true class (in first-seen order),
    so that every class the evaluation had is checked."""
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(str(row.get("truth", "")), []).append(row)
    picked: list[Mapping[str, Any]] = []
    queues = list(by_class.values())
    while queues and len(picked) < limit:
        for queue in list(queues):
            if len(picked) < limit:
                picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


def compare_canary(
    rows: Sequence[Mapping[str, Any]],
    probs: npt.NDArray[np.float32],
    labels: Sequence[str],
    tolerance: float,
) -> Canary:
    """Each live top-1 must be the row's offline ``pred``, its probability within
    ``tolerance`` of the offline ``score``."""
    mismatches = []
    max_delta = 0.0
    for row, p in zip(rows, probs, strict=True):
        best = int(np.argmax(p))
        got = labels[best] if best < len(labels) else str(best)
        prob = float(p[best])
        delta = abs(prob - float(row["score"]))
        max_delta = max(max_delta, delta)
        if got != row["pred"] or delta > tolerance:
            mismatches.append(
                {
                    "path": row.get("path", ""),
                    "expected": row["pred"],
                    "score": float(row["score"]),
                    "got": got,
                    "prob": prob,
                    "delta": round(delta, 6),
                }
            )
    return Canary(len(rows), tolerance, max_delta, mismatches)


class Quiet:
    """Drain: True once ``count`` (a version's executions) has not moved for
    ``quiet_s``; a count that drops (the version reloaded) starts again."""

    def __init__(self, quiet_s: float, now: float, count: int) -> None:
        self.quiet_s = quiet_s
        self.count = count
        self.since = now

    def observe(self, now: float, count: int) -> bool:
        if count != self.count:
            self.count, self.since = count, now
        return now - self.since >= self.quiet_s


@dataclass(frozen=True)
class VersionStats:
    """Triton's cumulative statistics of one loaded version."""

    executions: int
    success: int
    success_ns: int
    fail: int

    @classmethod
    def from_json(cls, stats: Mapping[str, Any]) -> VersionStats:
        inference = stats.get("inference_stats") or {}
        success = inference.get("success") or {}
        fail = inference.get("fail") or {}
        return cls(
            int(stats.get("execution_count", 0)),
            int(success.get("count", 0)),
            int(success.get("ns", 0)),
            int(fail.get("count", 0)),
        )


@dataclass(frozen=True)
class WatchLimits:
    watch_s: float = 60.0
    max_latency_ms: float = 500.0
    max_error_rate: float = 0.01


def watch_verdict(start: VersionStats, now: VersionStats, limits: WatchLimits) -> str | None:
    """Why the new version must go back (failures, error rate, mean latency since the
    watch began), or None while it is within the limits."""
    ok, failed = now.success - start.success, now.fail - start.fail
    total = ok + failed
    if failed > 0 and failed / total > limits.max_error_rate:
        return (
            f"watch: {failed} failed of {total} requests ({failed / total:.1%}), above the "
            f"error rate limit {limits.max_error_rate:.1%}"
        )
    if ok >= WATCH_MIN_REQUESTS:
        mean_ms = (now.success_ns - start.success_ns) / ok / 1e6
        if mean_ms > limits.max_latency_ms:
            return (
                f"watch: mean request latency {mean_ms:.1f} ms over {ok} requests, above "
                f"{limits.max_latency_ms:g} ms"
            )
    return None


# The outside world: Triton, Feast, the lock, the repository ------------------------


class Triton:
    """The live server's model control, statistics and inference (tritonclient.grpc,
    synchronous); its errors become ServiceError."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        import tritonclient.grpc as grpcclient

        self.address = address
        self.timeout_s = timeout_s
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(address)

    def close(self) -> None:
        self._client.close()

    def live(self) -> bool:
        try:
            return bool(self._client.is_server_live(client_timeout=2.0))
        except Exception:  # tritonclient raises InferenceServerException, grpc errors
            return False

    def load(self, model: str, timeout_s: float) -> None:
        self._call(f"load {model}", self._client.load_model, model, client_timeout=timeout_s)

    def unload(self, model: str) -> None:
        self._call(
            f"unload {model}", self._client.unload_model, model, client_timeout=self.timeout_s
        )

    def ready_versions(self, model: str) -> list[int]:
        index = self._call(
            "read the repository index", self._client.get_model_repository_index, as_json=True
        )
        return sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == model
            and m.get("state") == "READY"
            and str(m.get("version", "")).isdigit()
        )

    def stats(self, model: str, version: int) -> VersionStats | None:
        """The version's statistics; None when it is not loaded."""
        try:
            reply = self._client.get_inference_statistics(
                model, str(version), as_json=True, client_timeout=self.timeout_s
            )
        except Exception:
            return None
        rows = reply.get("model_stats") or []
        return VersionStats.from_json(rows[0]) if rows else None

    def classify(
        self, model: str, version: int, images: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        tensor = self._grpc.InferInput(modelrepo.IMAGE, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images))
        result = self._call(
            f"classify with {model}:{version}",
            self._client.infer,
            model,
            [tensor],
            model_version=str(version),
            outputs=[self._grpc.InferRequestedOutput(modelrepo.PROBS)],
            client_timeout=self.timeout_s * 3,
        )
        probs = result.as_numpy(modelrepo.PROBS)
        if probs is None:
            raise ServiceError(f"{model}:{version} answered without {modelrepo.PROBS}")
        return np.asarray(probs, dtype=np.float32)

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            message = exc.message() if hasattr(exc, "message") else str(exc)
            message = (str(message).strip().splitlines() or [""])[0]  # not the stub's traceback
            raise ServiceError(f"Triton at {self.address} could not {what}: {message}") from exc


class CameraRoutes:
    """Camera routes in Feast: read from the offline source (no feast import), written
    through ``featurestore.update_cameras`` on a store opened in a background thread
    (``import feast`` takes ~9 s here: it overlaps the load and the canary)."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._store: FeatureStore | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def rows(self) -> list[dict[str, Any]]:
        from camstream import featurestore

        if not (self.repo / "feature_store.yaml").is_file():
            return []
        return featurestore.registered_cameras(self.repo)

    def prefetch(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._open, name="feast-open", daemon=True)
            self._thread.start()

    def update(self, updates: Mapping[str, Mapping[str, Any]]) -> None:
        from camstream import featurestore

        self.prefetch()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._store is not None
        featurestore.update_cameras(self._store, {c: dict(u) for c, u in updates.items()})

    def _open(self) -> None:
        from camstream import featurestore

        try:
            self._store = featurestore.open_store(self.repo)
        except BaseException as exc:  # handed to the caller of update()
            self._error = exc


@contextlib.contextmanager
def rollout_lock(repo: Path, wait_s: float, command: str) -> Iterator[None]:
    """Hold ``<repo>/.rollout.lock``; after ``wait_s`` without it, RolloutRefused naming
    the holder's pid and command."""
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / LOCK_FILE
    with path.open("a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _lock_holder(path)
                    raise RolloutRefused(
                        f"lock: another rollout is running ({holder})",
                        f"another rollout is running on {repo} ({holder}); wait for it, or "
                        "pass --wait-s SECONDS to wait for it",
                    ) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": command, "since_ms": _now_ms()}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_holder(path: Path) -> str:
    for _ in range(10):  # the holder writes its name just after it takes the lock
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(path.read_text())
            return f"pid {holder['pid']}: {holder['command']}"
        time.sleep(0.05)
    return "pid unknown"


class RepoSnapshot:
    """A model's serving files before a promote, to put back exactly when it is
    refused before the switch (a version folder or model folder it created goes)."""

    FILES = (
        modelrepo.CONFIG_FILE,
        modelrepo.GPU_CONFIG_FILE,
        modelrepo.LABELS_FILE,
        modelrepo.REFERENCE_PROFILE_FILE,
        modelrepo.SERVING_FILE,
    )

    def __init__(self, repo: Path, model: str, version: int) -> None:
        self.folder = repo / model
        self.version_dir = self.folder / str(version)
        self.had_model = self.folder.is_dir()
        self.had_version = self.version_dir.is_dir()
        self.files = {
            n: (self.folder / n).read_bytes() for n in self.FILES if (self.folder / n).is_file()
        }

    def restore(self) -> None:
        if not self.had_model:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        if not self.had_version:
            shutil.rmtree(self.version_dir, ignore_errors=True)
        for name in self.FILES:
            path = self.folder / name
            if name in self.files:
                if not path.is_file() or path.read_bytes() != self.files[name]:
                    tmp = path.with_name(f".{path.name}.restore")
                    tmp.write_bytes(self.files[name])
                    os.replace(tmp, path)
            else:
                path.unlink(missing_ok=True)


def pin_serving(repo: Path, model: str) -> None:
    """Before installing a version beside the ones serving: write the model's default and
    policy down when they are implicit (the latest folder), so that the new folder
    changes neither until the switch."""
    if not modelrepo.model_versions(repo / model):
        return
    if not modelrepo.serving_path(repo, model).is_file():
        default = modelrepo.default_version(repo, model)
        if default is not None:
            modelrepo.write_default_version(repo, model, default)
    if modelrepo.version_policy(repo, model) is None:
        modelrepo.set_version_policy(repo, model, modelrepo.loaded_versions(repo, model))


def canary_images(
    predictions: Path, dataset_root: Path, limit: int = CANARY_IMAGES
) -> tuple[list[dict[str, Any]], npt.NDArray[np.uint8]]:
    """The evaluation rows to replay (files present, sha256 unchanged) and their model
    inputs, made as the worker makes them (camstream.imaging)."""
    import cv2

    from camstream import imaging
    from camstream.errors import FrameRejected
    from camstream.gate import read_predictions

    usable: list[dict[str, Any]] = []
    inputs: list[npt.NDArray[np.uint8]] = []
    for row in pick_canary(read_predictions(predictions), limit=10**9):
        if len(usable) >= limit:
            break
        path = dataset_root / str(row.get("path", ""))
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            continue
        try:
            if data[:2] == b"\xff\xd8":
                image = imaging.jpeg_to_model_input(data, *imaging.jpeg_dimensions(data))
            else:
                bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                image = imaging.to_model_input(np.asarray(bgr, dtype=np.uint8))
        except FrameRejected:
            continue
        usable.append(dict(row))
        inputs.append(image)
    if not inputs:
        return usable, np.zeros((0, imaging.MODEL_SIZE, imaging.MODEL_SIZE, 3), np.uint8)
    return usable, np.stack(inputs)


def read_fleet(settings: Settings, routes: CameraRoutes) -> Fleet:
    """The fleet as the repository and Feast describe it now."""
    repo = settings.model_repo
    defaults = {
        m.name: modelrepo.default_version(repo, m.name) for m in modelrepo.list_models(repo)
    }
    return Fleet.from_rows(routes.rows(), defaults, settings.model_name)


def switch_on_disk(
    settings: Settings,
    routes: CameraRoutes,
    before: Fleet,
    switch: Switch,
    record: Mapping[str, Any],
) -> list[str]:
    """No server is running: the switch, and the policies a server started on this
    repository loads (the versions in use after it), recorded in rollouts.jsonl with
    ``record``'s fields (action, version, command...). Returns the cameras switched."""
    after = before.apply(switch)
    used = after.in_use()
    for model in sorted({switch.model, *leaving(before, after)}):
        if used.get(model) and (settings.model_repo / model / modelrepo.CONFIG_FILE).is_file():
            modelrepo.set_version_policy(settings.model_repo, model, sorted(used[model]))
    if switch.routes:
        routes.update({c: r.columns() for c, r in switch.routes.items()})
    if switch.default is not None:
        modelrepo.write_default_version(settings.model_repo, switch.model, switch.default)
    switched = switched_cameras(before, after)
    append_record(
        settings.registry_path / HISTORY_FILE,
        {
            **_new_record(before, switch),
            "reason": "no live server: switched on disk, no canary",
            "switched": switched,
            "live": False,
            **record,
        },
    )
    return switched


def _new_record(before: Fleet, switch: Switch) -> dict[str, Any]:
    """A rollouts.jsonl record's common fields: id, time, what is switched and how to
    undo it."""
    undo = undo_switch(before, switch)
    return {
        "id": f"{_now_ms()}-{os.getpid()}",
        "time_ms": _now_ms(),
        "model": switch.model,
        "cameras": sorted(switch.routes) if switch.default is None else None,
        "previous": previous_of(before, switch),
        "undo": {
            "default": undo.default,
            "routes": {c: r.columns() for c, r in undo.routes.items()},
        },
        "reason": "",
        "canary": None,
        "timings_s": {},
        "pid": os.getpid(),
    }


def record_refusal(
    settings: Settings,
    registry: Registry | None,
    model: str,
    version: int,
    cameras: Sequence[str] | None,
    reason: str,
    command: str,
) -> None:
    """A promote refused before it began (the lock): in rollouts.jsonl and, for a
    registered model, the registry's history."""
    append_record(
        settings.registry_path / HISTORY_FILE,
        {
            "id": f"{_now_ms()}-{os.getpid()}",
            "time_ms": _now_ms(),
            "action": "refused",
            "model": model,
            "version": version,
            "cameras": list(cameras) if cameras else None,
            "previous": {},
            "reason": reason,
            "canary": None,
            "timings_s": {},
            "command": command,
            "pid": os.getpid(),
        },
    )
    if registry is not None and model in registry.models():
        registry.record_refusal(model, CHAMPION, version, [reason], {"rollout": "refused"})


# The rollout --------------------------------------------------------------------------


@dataclass(frozen=True)
class CanarySource:
    """Where a version's offline evaluation lives: its predictions and dataset folder."""

    predictions: Path
    dataset_root: Path
    tolerance: float = 0.02


@dataclass
class Outcome:
    record: dict[str, Any]
    switched: list[str]
    seconds: float
    switched_after_s: float | None


class Rollout:
    """One rollout at a time on ``settings.model_repo`` against the live Triton, with
    camera routes in Feast and its history beside the registry."""

    def __init__(
        self,
        settings: Settings,
        triton: Triton,
        routes: CameraRoutes,
        say: Callable[[str], None],
        command: str,
        registry: Registry | None = None,
        load_timeout_s: float = 120.0,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.repo = settings.model_repo
        self.triton = triton
        self.routes = routes
        self.say = say
        self.command = command
        self.registry = registry
        self.load_timeout_s = load_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.quiet_s = 2 * settings.feature_cache_ttl_s + 2
        self.history = settings.registry_path / HISTORY_FILE

    def fleet(self) -> Fleet:
        return read_fleet(self.settings, self.routes)

    # promote / rollback --------------------------------------------------------

    def promote(
        self,
        model: str,
        version: int,
        before: Fleet,
        switch: Switch,
        snapshot: RepoSnapshot,
        canary: CanarySource | None,
        limits: WatchLimits,
        on_promoted: Callable[[], None],
        started: float | None = None,
    ) -> Outcome:
        """Steps 3-8 for ``model:version`` (locked, installed; ``before`` read before the
        install; ``started``: the command's monotonic start). RolloutRefused when it
        failed or was rolled back."""
        started = time.monotonic() if started is None else started
        timings: dict[str, float] = {}
        record = self._record("promote", model, version, switch, before)
        after = before.apply(switch)
        if switch.routes:
            self.routes.prefetch()
        try:
            self._load(before, after, {model: {version}}, timings)
            self._canary(model, version, canary, record, timings)
        except (RolloutRefused, ConfigError) as error:
            refused = (
                error
                if isinstance(error, RolloutRefused)
                else RolloutRefused(f"plan: {error}", str(error))
            )
            self._restore(snapshot, model, timings)
            raise self._refuse(record, refused, timings, started) from None
        switched_at = self._switch(switch, timings)
        switched = switched_cameras(before, after)
        self._drain(before, after, timings)
        self._drop(before, after, timings)
        verdict = self._watch(model, version, limits, timings)
        if verdict is not None:
            self.say(f"  {verdict}: rolling back")
            try:  # the drop unloaded the old versions: back beside the new one first
                self._load(after, before, {}, timings, step="rollback_load")
            except RolloutRefused as stuck:
                record["reason"] = f"{verdict}; the rollback could not load: {stuck.reason}"
                record["timings_s"] = {**timings, "total": _since(started)}
                append_record(self.history, record)
                raise RolloutRefused(
                    record["reason"],
                    f"{verdict}, but the versions before it did not load ({stuck}): "
                    f"{model}:{version} still serves; roll back once they load",
                ) from None
            undo = undo_switch(before, switch)
            self._switch(undo, timings, step="rollback_switch")
            self._drain(after, before, timings, step="rollback_drain")
            self._drop(after, before, timings, step="rollback_drop")
            snapshot.restore()
            record["action"] = "auto_rollback"
            raise self._refuse(
                record, RolloutRefused(verdict, verdict), timings, started, switched
            ) from None
        on_promoted()
        return self._finish(record, switched, timings, started, switched_at)

    def rollback(
        self, model: str, cameras: Sequence[str] | None, started: float | None = None
    ) -> Outcome:
        """Undo the last promote of ``model`` (for ``cameras``) by the same path."""
        started = time.monotonic() if started is None else started
        timings: dict[str, float] = {}
        target, switch = rollback_target(read_records(self.history), model, cameras)
        before = self.fleet()
        after = before.apply(switch)
        record = self._record("rollback", model, switch.default, switch, before)
        record["undoes"] = target.get("id")
        record["cameras"] = list(cameras) if cameras else None
        record["version"] = (
            switch.default
            if switch.default is not None
            else sorted({after.resolve(c)[1] for c in switch.routes} - {None})
        )
        if switch.routes:
            self.routes.prefetch()
        wanted = {m: v for m, v in after.in_use().items() if m == model}
        try:
            self._load(before, after, wanted, timings)
        except RolloutRefused as refused:
            raise self._refuse(record, refused, timings, started) from None
        switched_at = self._switch(switch, timings)
        switched = switched_cameras(before, after)
        self._drain(before, after, timings)
        self._drop(before, after, timings)
        champion = target.get("champion_before")
        if self.registry is not None and switch.default is not None and isinstance(champion, int):
            with contextlib.suppress(ConfigError):  # a model outside the registry
                self.registry.set_alias(
                    model,
                    CHAMPION,
                    champion,
                    f"rollback of {model}:{target.get('version')}",
                    {"rollout": record["id"]},
                )
        return self._finish(record, switched, timings, started, switched_at)

    def shadow(
        self, model: str, version: int, cameras: Sequence[str], fraction: float
    ) -> dict[str, Any]:
        """Start (``fraction`` > 0) or stop (0) ``model:version`` shadowing ``cameras``:
        a version a camera shadows is loaded beside what serves before the camera names
        it; one no camera uses any more is drained, then dropped. Returns the record
        (also in rollouts.jsonl)."""
        started = time.monotonic()
        timings: dict[str, float] = {}
        before = self.fleet()
        unknown = sorted(set(cameras) - set(before.routes))
        if unknown:
            raise ConfigError(
                f"camera(s) {', '.join(unknown)} are not registered (registered: "
                f"{', '.join(sorted(before.routes)) or 'none'})"
            )
        shadows = dict(before.shadows)
        for camera in cameras:
            if fraction > 0:
                shadows[camera] = (model, version)
            else:
                shadows.pop(camera, None)
        after = replace(before, shadows=shadows)
        self.routes.prefetch()
        ref = f"{model}:{version}" if fraction > 0 else ""
        record: dict[str, Any] = {
            "id": f"{_now_ms()}-{os.getpid()}",
            "time_ms": _now_ms(),
            "action": "shadow_start" if fraction > 0 else "shadow_stop",
            "model": model,
            "version": version,
            "cameras": sorted(cameras),
            "fraction": fraction,
            "previous": {c: before.shadows.get(c) for c in cameras},
            "command": self.command,
            "pid": os.getpid(),
        }
        self._load(before, after, {model: {version}} if fraction > 0 else {}, timings)
        self.routes.update(
            {c: {"shadow_model": ref, "shadow_fraction": float(fraction)} for c in cameras}
        )
        self.say(f"  switch   {', '.join(sorted(cameras))}: shadow {ref or 'off'}")
        self._drain(before, after, timings)
        self._drop(before, after, timings)
        record["timings_s"] = {**timings, "total": _since(started)}
        append_record(self.history, record)
        return record

    # the steps ---------------------------------------------------------------

    def _load(
        self,
        before: Fleet,
        after: Fleet,
        new: Mapping[str, set[int]],
        timings: dict[str, float],
        step: str = "load",
    ) -> None:
        """Policy = in use before + after for each model that needs a version it does not
        serve; load it; every wanted version must be ready."""
        t = time.monotonic()
        used_before, used_after = before.in_use(), after.in_use()
        routed = after.routed_models() | set(new)
        for model in sorted(routed):
            wanted = used_after.get(model, set()) | new.get(model, set())
            if not wanted:
                continue
            ready = set(self.triton.ready_versions(model))
            if wanted <= ready:
                continue
            policy = used_before.get(model, set()) | wanted
            modelrepo.set_version_policy(self.repo, model, sorted(policy))
            serving = sorted(ready) or "none"
            self.say(f"  {step:<8} {model} versions {sorted(policy)} (serving {serving})")
            try:
                self.triton.load(model, self.load_timeout_s)
            except ServiceError as exc:
                raise RolloutRefused(f"load: {exc}", f"{model} did not load: {exc}") from exc
            missing = sorted(v for v in wanted if v not in self.triton.ready_versions(model))
            if missing:
                raise RolloutRefused(
                    f"load: {model} versions {missing} not ready after load",
                    f"{model} versions {missing} are not ready after the load",
                )
        timings[step] = _since(t)

    def _canary(
        self,
        model: str,
        version: int,
        source: CanarySource | None,
        record: dict[str, Any],
        timings: dict[str, float],
    ) -> None:
        """Step 4; its figures go into ``record`` whether it passes or not."""
        t = time.monotonic()
        if source is None:
            self.say(f"  canary   none: {model} has no offline evaluation")
            record["canary"] = {"n": 0, "note": "no offline evaluation"}
            return
        rows, images = canary_images(source.predictions, source.dataset_root)
        if not rows:
            raise RolloutRefused(
                "canary: no evaluation image to replay",
                f"none of {source.predictions}'s images is under {source.dataset_root} with its "
                "recorded sha256: fetch or restore that dataset (CAMSTREAM_DATASETS_DIR)",
            )
        try:
            probs = self.triton.classify(model, version, images)
        except ServiceError as exc:
            raise RolloutRefused(f"canary: {exc}", str(exc)) from exc
        labels = modelrepo.read_labels(modelrepo.labels_path(self.repo, model, version))
        result = compare_canary(rows, probs, labels, source.tolerance)
        timings["canary"] = _since(t)
        record["canary"] = result.figures()
        self.say(f"  canary   {result.summary()} ({timings['canary']:.1f} s)")
        if not result.passed:
            raise RolloutRefused(
                f"canary: {result.summary()}",
                f"{model}:{version} failed the canary: {result.summary()}",
            )

    def _switch(self, switch: Switch, timings: dict[str, float], step: str = "switch") -> float:
        t = time.monotonic()
        if switch.routes:
            self.routes.update({c: r.columns() for c, r in switch.routes.items()})
        if switch.default is not None:
            modelrepo.write_default_version(self.repo, switch.model, switch.default)
        timings[step] = _since(t)
        what = [f"default {switch.model} -> {switch.default}"] if switch.default is not None else []
        what += [
            f"{c} -> {r.model or '(default model)'}:{r.version or '(default)'}"
            for c, r in sorted(switch.routes.items())
        ]
        self.say(f"  {step:<8} {'; '.join(what) or 'nothing to change'} ({timings[step]:.1f} s)")
        return time.monotonic()

    def _drain(
        self, before: Fleet, after: Fleet, timings: dict[str, float], step: str = "drain"
    ) -> None:
        t = time.monotonic()
        watches: dict[tuple[str, int], Quiet] = {}
        for model, versions in leaving(before, after).items():
            for version in versions:
                stats = self.triton.stats(model, version)
                if stats is not None:
                    watches[(model, version)] = Quiet(
                        self.quiet_s, time.monotonic(), stats.executions + stats.fail
                    )
        pending = dict(watches)
        while pending and time.monotonic() - t < self.drain_timeout_s:
            time.sleep(0.25)
            for key, quiet in list(pending.items()):
                stats = self.triton.stats(*key)
                if stats is None or quiet.observe(time.monotonic(), stats.executions + stats.fail):
                    del pending[key]
        timings[step] = _since(t)
        names = ", ".join(f"{m}:{v}" for m, v in watches) or "nothing"
        busy = ", ".join(f"{m}:{v}" for m, v in pending)
        note = f"; still busy after {self.drain_timeout_s:.0f} s, going on: {busy}" if busy else ""
        self.say(f"  {step:<8} {names} ({timings[step]:.1f} s){note}")

    def _drop(
        self, before: Fleet, after: Fleet, timings: dict[str, float], step: str = "drop"
    ) -> None:
        t = time.monotonic()
        used = after.in_use()
        routed = after.routed_models()
        touched = set(leaving(before, after)) | {
            m for m, v in used.items() if set(self.triton.ready_versions(m)) - v
        }
        for model in sorted(touched):
            wanted = sorted(used.get(model, set()))
            if model not in routed and self.triton.ready_versions(model):
                if wanted:
                    modelrepo.set_version_policy(self.repo, model, wanted)
                self.triton.unload(model)
                self.say(f"  {step:<8} {model}: no camera uses it, unloaded")
            elif wanted and set(self.triton.ready_versions(model)) != set(wanted):
                modelrepo.set_version_policy(self.repo, model, wanted)
                self.triton.load(model, self.load_timeout_s)
                self.say(f"  {step:<8} {model} now loads {wanted}")
        timings[step] = _since(t)

    def _watch(
        self, model: str, version: int, limits: WatchLimits, timings: dict[str, float]
    ) -> str | None:
        if limits.watch_s <= 0:
            return None
        t = time.monotonic()
        start = self.triton.stats(model, version) or VersionStats(0, 0, 0, 0)
        last = start
        verdict = None
        while time.monotonic() - t < limits.watch_s:
            time.sleep(min(1.0, max(limits.watch_s - (time.monotonic() - t), 0.05)))
            now = self.triton.stats(model, version)
            if now is None or version not in self.triton.ready_versions(model):
                verdict = f"watch: {model}:{version} is no longer ready"
                break
            if now.success < last.success or now.fail < last.fail:  # reloaded: counts restart
                start = VersionStats(0, 0, 0, 0)
            last = now
            verdict = watch_verdict(start, now, limits)
            if verdict is not None:
                break
        timings["watch"] = _since(t)
        served = last.success - start.success
        if verdict is None:
            failed = last.fail - start.fail
            self.say(f"  watch    {limits.watch_s:g} s: {served} requests, {failed} failed: fine")
        return verdict

    def _restore(self, snapshot: RepoSnapshot, model: str, timings: dict[str, float]) -> None:
        """After a refusal before the switch: the repository as it was, and Triton
        serving what it names again (a failed load left the old versions serving)."""
        t = time.monotonic()
        snapshot.restore()
        if not snapshot.had_model:
            with contextlib.suppress(ServiceError):
                self.triton.unload(model)
        else:
            wanted = set(modelrepo.loaded_versions(self.repo, model))
            if set(self.triton.ready_versions(model)) != wanted:
                self.triton.load(model, self.load_timeout_s)
        timings["restore"] = _since(t)

    # records ------------------------------------------------------------------

    def _record(
        self, action: str, model: str, version: int | None, switch: Switch, before: Fleet
    ) -> dict[str, Any]:
        registered = self.registry is not None and model in self.registry.models()
        aliases = self.registry.aliases(model) if self.registry is not None and registered else {}
        return {
            **_new_record(before, switch),
            "action": action,
            "version": version,
            "champion_before": aliases.get(CHAMPION),
            "command": self.command,
            "triton": self.triton.address,
        }

    def _refuse(
        self,
        record: dict[str, Any],
        refused: RolloutRefused,
        timings: dict[str, float],
        started: float,
        switched: list[str] | None = None,
    ) -> RolloutRefused:
        if record["action"] == "promote":
            record["action"] = "refused"
        record["reason"] = refused.reason
        record["switched_back"] = switched or []
        record["timings_s"] = {**timings, "total": _since(started)}
        append_record(self.history, record)
        if (
            self.registry is not None
            and record["model"] in self.registry.models()
            and record["action"] != "rollback"
        ):
            self.registry.record_refusal(
                record["model"],
                CHAMPION,
                int(record["version"]),
                [refused.reason],
                {"rollout": record["id"], "canary": record.get("canary")},
            )
        return RolloutRefused(refused.reason, str(refused))

    def _finish(
        self,
        record: dict[str, Any],
        switched: list[str],
        timings: dict[str, float],
        started: float,
        switched_at: float,
    ) -> Outcome:
        total = _since(started)
        record["switched"] = switched
        record["timings_s"] = {
            **timings,
            "to_switched": round(switched_at - started, 3),
            "total": total,
        }
        append_record(self.history, record)
        return Outcome(record, switched, total, round(switched_at - started, 3))


def _since(t: float) -> float:
    return round(time.monotonic() - t, 3)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
