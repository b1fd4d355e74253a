"""The Feast feature repository: prepare, apply, register cameras, read features.

features/ in the source tree holds the declarations; a deployment applies a copy of it
in its own folder (the local stack: ``<state_dir>/feast``) so registry, online store
and data files never land in the source tree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import time
from datetime import UTC, datetime
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
META_COLUMNS = ("site", "zone", "indoor", "confidence_threshold")
META_FILE = Path("data") / "camera_meta.parquet"


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
    repo = Path(store.repo_path)
    path = repo / META_FILE
    now = pd.Timestamp(datetime.now(UTC))
    rows = pd.DataFrame(
        [
            {
                "camera_id": c.id,
                **{column: getattr(c, column) for column in META_COLUMNS},
                "event_timestamp": now,
                "created": now,
            }
            for c in cameras
        ]
    )
    rows["confidence_threshold"] = rows["confidence_threshold"].astype("float32")
    if path.exists():
        previous = pd.read_parquet(path)
        previous = previous[~previous["camera_id"].isin(rows["camera_id"])]
        rows = pd.concat([previous, rows], ignore_index=True)
    tmp = path.with_suffix(".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)
    materialize_all(store)
    log.info("feast.cameras_upserted", cameras=[c.id for c in cameras])


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
    """The registered cameras' metadata from the offline source, sorted by id."""
    path = repo / META_FILE
    if not path.exists():
        return []
    rows = pd.read_parquet(path).sort_values("camera_id")
    return [
        {"camera_id": row["camera_id"], **{c: _plain(row[c]) for c in META_COLUMNS}}
        for _, row in rows.iterrows()
    ]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def remove_cameras(store: FeatureStore, camera_ids: list[str]) -> list[str]:
    """Unregister cameras: drop them from the offline source and blank their online
    metadata, so enrichment reports them as unknown (``missing``) without a restart.
    Returns the ids that were registered."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    repo = Path(store.repo_path)
    path = repo / META_FILE
    if not path.exists():
        return []
    rows = pd.read_parquet(path)
    known = sorted(set(rows["camera_id"]) & set(camera_ids))
    if not known:
        return []
    tmp = path.with_suffix(".tmp")
    rows[~rows["camera_id"].isin(known)].to_parquet(tmp, index=False)
    tmp.replace(path)
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
