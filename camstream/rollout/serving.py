"""The outside world a rollout changes: the live Triton (``Triton``: model control,
statistics, inference), camera routes in Feast (``CameraRoutes``), and the model
repository (``RepoSnapshot`` to put it back, ``pin_serving``, ``read_fleet``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.errors import ServiceError
from camstream.rollout.plan import Fleet
from camstream.rollout.watch import VersionStats

if TYPE_CHECKING:
    from feast import FeatureStore

    from camstream.settings import Settings


class _Server:
    """One live server's model control, statistics and inference (tritonclient.grpc,
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


class Triton:
    """The live Triton servers of ``CAMSTREAM_TRITON_GRPC`` (one address or a
    comma-separated list) as one: what a rollout changes acts on every server that is
    live, and a server that is down is left alone (it loads the on-disk version policy
    when it starts). A version counts as ready when every live server serves it;
    statistics are summed over the servers; a canary batch is split over them, so each
    answers for its share."""

    def __init__(self, addresses: str, timeout_s: float = 10.0) -> None:
        from camstream.settings import parse_addresses

        self.address = addresses
        self._servers = [_Server(a, timeout_s) for a in parse_addresses(addresses)]

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def _live(self) -> list[_Server]:
        return [server for server in self._servers if server.live()]

    def live(self) -> bool:
        """Whether any server answers (the rollout then acts on those that do)."""
        return any(server.live() for server in self._servers)

    def load(self, model: str, timeout_s: float) -> None:
        for server in self._live():
            server.load(model, timeout_s)

    def unload(self, model: str) -> None:
        for server in self._live():
            server.unload(model)

    def ready_versions(self, model: str) -> list[int]:
        """The versions of ``model`` that every live server serves."""
        live = self._live()
        if not live:
            return []
        ready = set(live[0].ready_versions(model))
        for server in live[1:]:
            ready &= set(server.ready_versions(model))
        return sorted(ready)

    def stats(self, model: str, version: int) -> VersionStats | None:
        """The version's statistics summed over the servers that have it loaded; None
        when none has."""
        found = [s for s in (server.stats(model, version) for server in self._servers) if s]
        if not found:
            return None
        return VersionStats(
            sum(s.executions for s in found),
            sum(s.success for s in found),
            sum(s.success_ns for s in found),
            sum(s.fail for s in found),
        )

    def classify(
        self, model: str, version: int, images: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        """Probabilities for ``images``, each live server answering for its share."""
        live = self._live() or self._servers[:1]  # the error then names the server
        live = live[: max(1, len(images))]
        parts = np.array_split(images, len(live))
        answers = [s.classify(model, version, p) for s, p in zip(live, parts, strict=True)]
        return np.concatenate(answers)


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


def read_fleet(settings: Settings, routes: CameraRoutes) -> Fleet:
    """The fleet as the repository and Feast describe it now."""
    repo = settings.model_repo
    defaults = {
        m.name: modelrepo.default_version(repo, m.name) for m in modelrepo.list_models(repo)
    }
    return Fleet.from_rows(routes.rows(), defaults, settings.model_name)
