"""The path of a rollout, step by step (see ``camstream.rollout``): the lock
(``rollout_lock``: one rollout at a time per model repository), ``Rollout``'s promote,
rollback and shadow against the live server, their ``Outcome``, ``switch_on_disk`` when
no server runs, and ``RolloutRefused`` with its record in the history
(``record_refusal`` for a promote refused before it began).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camstream import modelrepo
from camstream.errors import CamstreamError, ConfigError, ServiceError
from camstream.locks import HeldLock
from camstream.rollout.canary import CanarySource, canary_images, compare_canary
from camstream.rollout.plan import (
    HISTORY_FILE,
    Fleet,
    Switch,
    append_record,
    leaving,
    new_record,
    now_ms,
    read_records,
    rollback_target,
    switched_cameras,
    undo_switch,
)
from camstream.rollout.serving import CameraRoutes, RepoSnapshot, Triton, read_fleet
from camstream.rollout.watch import Quiet, VersionStats, WatchLimits, watch_verdict

if TYPE_CHECKING:
    from camstream.registry import Registry
    from camstream.settings import Settings

LOCK_FILE = ".rollout.lock"
DRAIN_TIMEOUT_S = 60.0
CHAMPION = "champion"


class RolloutRefused(CamstreamError):
    """A rollout that did not happen or was undone; ``reason`` starts with its step
    (lock, load, canary, watch, plan) and the message says what still serves."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def rollout_lock(repo: Path, wait_s: float, command: str) -> Iterator[None]:
    """Hold ``<repo>/.rollout.lock``; after ``wait_s`` without it, RolloutRefused naming
    the holder's pid and command."""
    lock = HeldLock(repo / LOCK_FILE)

    def refuse() -> RolloutRefused:
        holder = lock.holder(lambda r: f"pid {r['pid']}: {r['command']}", "pid unknown")
        holder = holder or "pid unknown"
        return RolloutRefused(
            f"lock: another rollout is running ({holder})",
            f"another rollout is running on {repo} ({holder}); wait for it, or "
            "pass --wait-s SECONDS to wait for it",
        )

    def record() -> dict[str, Any]:
        return {"pid": os.getpid(), "command": command, "since_ms": now_ms()}

    with lock.acquire(record, wait_s, refuse):
        yield


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
            **new_record(before, switch),
            "reason": "no live server: switched on disk, no canary",
            "switched": switched,
            "live": False,
            **record,
        },
    )
    return switched


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
            "id": f"{now_ms()}-{os.getpid()}",
            "time_ms": now_ms(),
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
            "id": f"{now_ms()}-{os.getpid()}",
            "time_ms": now_ms(),
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
            **new_record(before, switch),
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
