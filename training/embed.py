"""Embeddings: what the frozen EfficientNet-Lite0 trunk makes of each image, computed once.

The trunk is the pretrained network without its classifier, exported once to ONNX with
the serving graph's own input (``IMAGE`` uint8 [N, 224, 224, 3], normalised inside,
exactly as training.export's wrapper) and two outputs: ``FEATURES``, the pooled 1280-d
vector a new head is trained on, and ``ACTIVATIONS``, the last block's [320, 7, 7] map
that fine-tuning the conv head starts from. It runs on onnxruntime (Embedder says
which threads and batch size, as measured).

Results are cached under ``<cache_dir>/embeddings/<trunk sha>/<view>/<kind>/`` keyed by
the image's sha256, so a second training on the same images computes nothing, and a new
trunk (other weights, exporter or torch) can never be mixed with an old one's results.
A cache folder holds chunks of a few thousand images, each a ``.keys.npy`` (the sha256
hex digests) and a ``.data.npy`` (float16 rows) written through temporary names, keys
last: an interrupted run keeps every finished chunk. Images are read by
``training.predict.load_model_input``, the serving path; a view (``hflip``) is made from
that model input.

Runs in the model environment (torch only to export the trunk, onnxruntime, numpy).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training import export
from training.predict import load_model_input

FEATURES = "FEATURES"
ACTIVATIONS = "ACTIVATIONS"
FEATURE_DIM = 1280
ACTIVATION_SHAPE = (320, 7, 7)
BATCH = 4  # per worker thread (see Embedder)
CHUNK = 2048  # images per cache chunk
# Bump when the trunk graph changes: a new trunk file, so a new cache folder.
TRUNK_VERSION = 1

Floats = npt.NDArray[np.float32]
Halfs = npt.NDArray[np.float16]
Progress = Callable[[int, int], None]  # (done, total)


class View(StrEnum):
    """How an image is shown to the trunk: as served, or mirrored (augmentation)."""

    ORIGINAL = "original"
    HFLIP = "hflip"


class Kind(StrEnum):
    FEATURES = "features"
    ACTIVATIONS = "activations"


def apply_view(image: npt.NDArray[np.uint8], view: View) -> npt.NDArray[np.uint8]:
    """The model input [224, 224, 3] as ``view`` shows it."""
    if view == View.HFLIP:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def trunk_module(weights: Path) -> Any:  # a torch.nn.Module
    """uint8 NHWC -> (pooled features [N, 1280], last block's activations [N, 320, 7, 7])."""
    import torch

    backbone = export.load_backbone(weights)

    class Trunk(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            net = self.net
            x = net._swish(net._bn0(net._conv_stem(export.normalise(image))))
            for block in net._blocks:
                x = block(x)
            head = net._swish(net._bn1(net._conv_head(x)))
            return net._avg_pooling(head).flatten(1), x

    return Trunk(backbone).eval()


def trunk_onnx(cache_dir: Path) -> Path:
    """The trunk's ONNX file, exported on first use and kept under the cache."""
    weights = export.weights_path()
    from importlib import metadata

    recipe = f"{export.sha256_file(weights)}:{TRUNK_VERSION}:{metadata.version('torch')}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    path = cache_dir / "embeddings" / f"trunk-{key}.onnx"
    if path.is_file():
        return path
    export.export_onnx(trunk_module(weights), path, (FEATURES, ACTIVATIONS))
    return path


@dataclass(frozen=True)
class Chunk:
    keys: npt.NDArray[np.str_]
    data_path: Path


class EmbeddingCache:
    """Rows of one trunk's outputs by image sha256, per view and kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[tuple[View, Kind], dict[str, tuple[Path, int]]] = {}

    def folder(self, view: View, kind: Kind) -> Path:
        return self.root / str(view) / str(kind)

    def index(self, view: View, kind: Kind) -> dict[str, tuple[Path, int]]:
        """sha256 -> (data file, row) over every finished chunk (read once)."""
        if (view, kind) not in self._index:
            found: dict[str, tuple[Path, int]] = {}
            folder = self.folder(view, kind)
            for keys_path in sorted(folder.glob("*.keys.npy")) if folder.is_dir() else []:
                data = keys_path.with_name(keys_path.name.replace(".keys.", ".data."))
                for row, sha in enumerate(np.load(keys_path).tolist()):
                    found[sha] = (data, row)
            self._index[view, kind] = found
        return self._index[view, kind]

    def missing(self, view: View, kind: Kind, shas: Sequence[str]) -> list[str]:
        have = self.index(view, kind)
        return [sha for sha in dict.fromkeys(shas) if sha not in have]

    def put(self, view: View, kind: Kind, shas: Sequence[str], rows: npt.NDArray[Any]) -> None:
        """Write one chunk (data first, keys last, each renamed into place)."""
        folder = self.folder(view, kind)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        data_path = folder / f"{name}.data.npy"
        _save_atomic(data_path, rows.astype(np.float16))
        _save_atomic(folder / f"{name}.keys.npy", np.asarray(list(shas), dtype="<U64"))
        index = self.index(view, kind)
        for row, sha in enumerate(shas):
            index[sha] = (data_path, row)

    def get(self, view: View, kind: Kind, shas: Sequence[str]) -> Halfs:
        """The cached rows of ``shas``, in order (float16; every sha must be cached)."""
        index = self.index(view, kind)
        shape = (FEATURE_DIM,) if kind == Kind.FEATURES else ACTIVATION_SHAPE
        out = np.empty((len(shas), *shape), dtype=np.float16)
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for i, sha in enumerate(shas):
            data, row = index[sha]
            by_file.setdefault(data, []).append((i, row))
        for data, pairs in by_file.items():
            rows = np.load(data, mmap_mode="r")
            targets, sources = zip(*pairs, strict=True)
            out[list(targets)] = rows[list(sources)]
        return out


def _save_atomic(path: Path, array: npt.NDArray[Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class EmbedStats:
    computed: int  # images run through the trunk (0: all cached)
    cached: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.computed and self.seconds > 0 else 0.0


class Embedder:
    """The trunk on onnxruntime and its cache folder.

    ``threads`` worker threads each run their own one-thread session on small batches:
    measured on 2 cores, two 1-thread sessions at batch 4 ran ~145 img/s where one
    2-thread session ran ~100 at batch 1 and ~50 at batch 32 (the activations of a large
    batch at 224x224 overflow the caches). Each worker also reads its images (OpenCV
    releases the GIL)."""

    def __init__(self, cache_dir: Path, threads: int = 2) -> None:
        self.onnx = trunk_onnx(cache_dir)
        self.trunk_sha = export.sha256_file(self.onnx)[:16]
        self.cache = EmbeddingCache(cache_dir / "embeddings" / self.trunk_sha)
        self.threads = max(1, threads)
        self._local = threading.local()

    def _session(self) -> Any:  # onnxruntime.InferenceSession, one per worker thread
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(self.onnx), options, providers=["CPUExecutionProvider"]
            )
            self._local.session = session
        return session

    def _run(self, paths: Sequence[Path], view: View) -> tuple[Floats, Floats]:
        images = np.stack([apply_view(load_model_input(path), view) for path in paths])
        pooled, act = self._session().run([FEATURES, ACTIVATIONS], {export.INPUT_NAME: images})
        return pooled, act

    def ensure(
        self,
        items: Sequence[tuple[str, Path]],
        views: Sequence[View],
        activations: bool = False,
        progress: Progress | None = None,
    ) -> EmbedStats:
        """Compute and cache what is missing for ``items`` ((sha256, image path)) in each
        view: features always, activations too when asked."""
        started = time.monotonic()
        kinds = [Kind.FEATURES, *([Kind.ACTIVATIONS] if activations else [])]
        paths = dict(items)
        todo: list[tuple[View, list[str]]] = []
        for view in views:
            missing: set[str] = set()
            for kind in kinds:
                missing.update(self.cache.missing(view, kind, list(paths)))
            todo.append((view, [sha for sha in paths if sha in missing]))
        total = sum(len(shas) for _, shas in todo)
        done = 0
        if progress is not None:
            progress(0, total)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for view, shas in todo:
                for start in range(0, len(shas), CHUNK):
                    part = shas[start : start + CHUNK]
                    features = np.empty((len(part), FEATURE_DIM), dtype=np.float16)
                    maps = np.empty((len(part), *ACTIVATION_SHAPE), dtype=np.float16)
                    groups = [part[b : b + BATCH] for b in range(0, len(part), BATCH)]
                    runs = pool.map(lambda g, v=view: self._run([paths[s] for s in g], v), groups)
                    row = 0
                    for group, (pooled, act) in zip(groups, runs, strict=True):
                        features[row : row + len(group)] = pooled
                        maps[row : row + len(group)] = act
                        row += len(group)
                        done += len(group)
                        if progress is not None:
                            progress(done, total)
                    self.cache.put(view, Kind.FEATURES, part, features)
                    if activations:
                        self.cache.put(view, Kind.ACTIVATIONS, part, maps)
        unique = len(paths) * len(views)
        return EmbedStats(computed=total, cached=unique - total, seconds=time.monotonic() - started)

    def features(self, shas: Sequence[str], view: View = View.ORIGINAL) -> Floats:
        return self.cache.get(view, Kind.FEATURES, shas).astype(np.float32)

    def activations(self, shas: Sequence[str], view: View = View.ORIGINAL) -> Halfs:
        return self.cache.get(view, Kind.ACTIVATIONS, shas)
