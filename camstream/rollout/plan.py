"""The rollout's plan, as plain functions on plain values: what answers for each camera
(``Fleet``: routes, shadows, models' default versions), which versions are in use, what
a promote switches (``plan_promote``) and how to undo it (``undo_switch``), which
versions leave use (what the drain waits for); and the history, ``rollouts.jsonl``:
its records, their common fields, and what a rollback undoes (``rollback_target``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from camstream import modelrepo
from camstream.errors import ConfigError

HISTORY_FILE = "rollouts.jsonl"


# Routes, versions in use, switches ---------------------------------------------------


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


def new_record(before: Fleet, switch: Switch) -> dict[str, Any]:
    """A rollouts.jsonl record's common fields: id, time, what is switched and how to
    undo it."""
    undo = undo_switch(before, switch)
    return {
        "id": f"{now_ms()}-{os.getpid()}",
        "time_ms": now_ms(),
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


def now_ms() -> int:
    return time.time_ns() // 1_000_000
