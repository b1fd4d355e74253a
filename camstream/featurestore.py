"""The Feast feature repository: prepare, apply, register cameras, read features.

features/ in the source tree holds the declarations; a deployment applies a copy of it
in its own folder (the local stack: ``<state_dir>/feast``) so registry, online store
and data files never land in the source tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import math
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import structlog

from camstream.cameras import CameraSpec
from camstream.errors import ConfigError
from camstream.settings import REPO_ROOT

if TYPE_CHECKING:
    from feast import FeatureStore

log = structlog.get_logger(__name__)

SOURCE_REPO = REPO_ROOT / "features"
META_VIEW = "camera_meta_fv"
ENRICHMENT_SERVICE = "camera_enrichment_v1"
ROUTING_COLUMNS = ("model", "model_version", "shadow_model", "shadow_fraction")
META_COLUMNS = ("site", "zone", "indoor", "confidence_threshold", *ROUTING_COLUMNS)
FLOAT32_COLUMNS = ("confidence_threshold", "shadow_fraction")
# What a row written before a column existed holds for it.
COLUMN_DEFAULTS: dict[str, Any] = {
    name: CameraSpec.model_fields[name].default for name in META_COLUMNS
}
META_FILE = Path("data") / "camera_meta.parquet"
# Where a camera's frames come from: kept in the offline rows beside the metadata, for
# producers that follow the registry (`camstream produce --from-registry`); not features.
PRODUCER_COLUMNS = (
    "source",
    "fps",
    "loop",
    "max_width",
    "max_height",
    "jpeg_quality",
    "enabled",
    "backpressure",
)


class FeatureRepoError(ConfigError):
    """The feature repository is missing or broken; the message names the fix."""


def prepare_repo(target: Path, source: Path = SOURCE_REPO) -> Path:
    """Copy the declarations and feature_store.yaml into ``target`` (kept up to date)."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "data").mkdir(exist_ok=True)
    for path in [source / "feature_store.yaml", *sorted(source.glob("*.py"))]:
        shutil.copyfile(path, target / path.name)
    return target


def open_store(repo: Path) -> FeatureStore:
    """A FeatureStore on an applied repo; fails with the fix when there is none."""
    if not (repo / "feature_store.yaml").is_file():
        raise FeatureRepoError(
            f"no feature repo at {repo}: run `camstream up`, or set CAMSTREAM_FEAST_REPO "
            "to a folder prepared from features/"
        )
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo))


def _declared_objects(repo: Path) -> list[Any]:
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    objects: list[Any] = []
    for path in sorted(repo.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"camstream_features_{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        objects += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, Entity | DataSource | FeatureView | FeatureService)
        ]
    return objects


def apply_repo(repo: Path) -> FeatureStore:
    """What ``feast apply`` does, without the CLI's chdir and start-up cost."""
    store = open_store(repo)
    store.apply(_declared_objects(repo))
    log.info("feast.applied", repo=str(repo))
    return store


def upsert_cameras(store: FeatureStore, cameras: list[CameraSpec]) -> None:
    """Record cameras' metadata in the offline source and materialize it online."""
    path = Path(store.repo_path) / META_FILE
    now = pd.Timestamp(datetime.now(UTC))
    rows = pd.DataFrame(
        [
            {
                "camera_id": c.id,
                **{column: getattr(c, column) for column in META_COLUMNS},
                **{column: _producer_value(c, column) for column in PRODUCER_COLUMNS},
                "event_timestamp": now,
                "created": now,
            }
            for c in cameras
        ]
    )
    with _meta_lock(path):
        previous = _read_meta(path)
        if previous is not None:
            previous = previous[~previous["camera_id"].isin(rows["camera_id"])]
            rows = pd.concat([previous, rows], ignore_index=True)
        _write_meta(path, rows)
        materialize_all(store)
    log.info("feast.cameras_upserted", cameras=[c.id for c in cameras])


def update_cameras(store: FeatureStore, updates: dict[str, dict[str, Any]]) -> None:
    """Change some metadata of registered cameras (only the columns given; the rest
    stays) and write it online: how promote, rollback and shadow route cameras.
    Raises ConfigError naming any camera that is not registered, changing nothing."""
    path = Path(store.repo_path) / META_FILE
    with _meta_lock(path):
        _update(store, path, updates)
    log.info("feast.cameras_updated", updates=updates)


def _update(store: FeatureStore, path: Path, updates: dict[str, dict[str, Any]]) -> None:
    rows = _read_meta(path)
    known = set() if rows is None else set(rows["camera_id"])
    unknown = sorted(set(updates) - known)
    if unknown:
        raise ConfigError(
            f"cameras {unknown} are not registered in {store.repo_path}: "
            "`camstream cameras add ID` first, or check the ids (`camstream cameras list`)"
        )
    assert rows is not None
    columns = {column for change in updates.values() for column in change}
    if columns - set(META_COLUMNS):
        raise ConfigError(f"unknown camera metadata {sorted(columns - set(META_COLUMNS))}")
    latest = _latest(rows).set_index("camera_id")
    now = pd.Timestamp(datetime.now(UTC))
    added = []
    for camera_id, change in updates.items():
        current = {c: _plain(latest.loc[camera_id, c]) for c in META_COLUMNS}
        # Validated as a whole camera, so a bad value is refused with its reason.
        CameraSpec.model_validate({"id": camera_id, "source": "synthetic", **current, **change})
        kept = {c: _plain(latest.loc[camera_id, c]) for c in PRODUCER_COLUMNS if c in latest}
        added.append(
            {
                "camera_id": camera_id,
                **current,
                **change,
                **kept,
                "event_timestamp": now,
                "created": now,
            }
        )
    # A new row, not an edit: point-in-time reads (collect) of earlier frames still see
    # the metadata as it was then.
    changed = pd.DataFrame(added)
    _write_meta(path, pd.concat([rows, changed], ignore_index=True))
    # Straight to the online store, not materialize(): that puts the view in state
    # MATERIALIZING and rewrites the registry, and every worker read fails meanwhile.
    for column in FLOAT32_COLUMNS:
        changed[column] = changed[column].astype("float32")
    online = changed[["camera_id", *META_COLUMNS, "event_timestamp", "created"]]
    store.write_to_online_store(META_VIEW, online)


def _latest(rows: pd.DataFrame) -> pd.DataFrame:
    """Each camera's newest row."""
    ordered = rows.sort_values(["event_timestamp", "created"], kind="stable")
    return ordered.drop_duplicates("camera_id", keep="last")


@contextlib.contextmanager
def _meta_lock(path: Path) -> Iterator[None]:
    """One writer of the camera rows at a time (cameras add, promote, shadow...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".camera_meta.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_meta(path: Path) -> pd.DataFrame | None:
    """The offline camera rows, with any column added since they were written filled
    with its default; None when no camera was ever registered."""
    if not path.exists():
        return None
    rows = pd.read_parquet(path)
    for column in META_COLUMNS:
        if column not in rows:
            rows[column] = COLUMN_DEFAULTS[column]
    return rows


def _write_meta(path: Path, rows: pd.DataFrame) -> None:
    for column in FLOAT32_COLUMNS:
        rows[column] = rows[column].astype("float32")
    tmp = path.with_suffix(".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)


def materialize_all(store: FeatureStore) -> None:
    """Load every camera's latest metadata from the offline source into the online store."""
    if not (Path(store.repo_path) / META_FILE).exists():
        return  # no camera registered yet
    # Feast prints its progress to stdout, which is the CLI's output: keep it out.
    with contextlib.redirect_stdout(io.StringIO()):
        store.materialize(
            start_date=datetime(2000, 1, 1, tzinfo=UTC),
            end_date=datetime.now(UTC),
            feature_views=[META_VIEW],
        )


def camera_features(store: FeatureStore, camera_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Online features of the enrichment service per camera (None where unknown)."""
    service = store.get_feature_service(ENRICHMENT_SERVICE)
    started = time.perf_counter()
    table = store.get_online_features(
        features=service, entity_rows=[{"camera_id": cid} for cid in camera_ids]
    ).to_dict()
    log.debug("feast.read", cameras=len(camera_ids), ms=(time.perf_counter() - started) * 1e3)
    out: dict[str, dict[str, Any]] = {}
    for index, cid in enumerate(table["camera_id"]):
        out[cid] = {name: table[name][index] for name in META_COLUMNS if name in table}
    return out


# -- camera registry (producers: `camstream cameras list|remove`) --


def registered_cameras(repo: Path) -> list[dict[str, Any]]:
    """The registered cameras' metadata from the offline source, sorted by id, with
    their producer fields (``PRODUCER_COLUMNS``; None where a row has none: a camera
    registered before they were kept)."""
    rows = _read_meta(repo / META_FILE)
    if rows is None:
        return []
    rows = _latest(rows).sort_values("camera_id")
    return [
        {
            "camera_id": row["camera_id"],
            **{c: _plain(row[c]) for c in META_COLUMNS},
            **{c: _present(row.get(c)) for c in PRODUCER_COLUMNS},
        }
        for _, row in rows.iterrows()
    ]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _present(value: Any) -> Any:
    """A stored value, or None for a missing one (null, NaN)."""
    plain = None if value is None else _plain(value)
    return None if isinstance(plain, float) and math.isnan(plain) else plain


def _producer_value(camera: CameraSpec, column: str) -> Any:
    value = getattr(camera, column)
    return "" if value is None else value.value if isinstance(value, StrEnum) else value


def remove_cameras(store: FeatureStore, camera_ids: list[str]) -> list[str]:
    """Unregister cameras: drop them from the offline source and blank their online
    metadata, so enrichment reports them as unknown (``missing``) without a restart.
    Returns the ids that were registered."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    path = Path(store.repo_path) / META_FILE
    with _meta_lock(path):
        rows = _read_meta(path)
        if rows is None:
            return []
        known = sorted(set(rows["camera_id"]) & set(camera_ids))
        if not known:
            return []
        _write_meta(path, rows[~rows["camera_id"].isin(known)].copy())
    # Feast has no delete; an online row whose every feature is null reads as unknown.
    view = store.get_feature_view(META_VIEW)
    now = datetime.now(UTC)
    blank: list[tuple[Any, dict[str, Any], datetime, datetime | None]] = [
        (
            EntityKeyProto(join_keys=["camera_id"], entity_values=[ValueProto(string_val=cid)]),
            {feature.name: ValueProto() for feature in view.features},
            now,
            now,
        )
        for cid in known
    ]
    store._get_provider().online_write_batch(store.config, view, blank, None)
    log.info("feast.cameras_removed", cameras=known)
    return known
