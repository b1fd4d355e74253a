"""Small trained models for tests that need a real registered version, and the faulty
versions a rollout must refuse.

``train_fashion`` trains a CI-sized Fashion-MNIST classifier through the real training
command (``python -m training.train`` in the model environment, as `camstream train`
runs it) into a given registry. Its images are the first of each class in the seeded
order that test_train_fashion.py and test_lifecycle.py use, so the embedding cache
they fill serves this one too (measured on 2 shared cores: ~25 s cold, ~15 s warm).

The variants are registered from a trained version's own files, so the registry, the
gate and the canary treat them as versions like any other:

- ``register_copy``: the same model, re-registered with a note in its card: a good
  new version that answers exactly like its evaluation;
- ``register_broken_onnx``: the ONNX file cut in half: Triton fails to load it;
- ``register_altered_preprocessing``: the same network behind an inserted Gather that
  flips the input image upside down (a preprocessing change made after evaluation),
  registered with the original's evaluation files, so its live outputs differ from
  its own evaluation: training-serving skew that only a canary catches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from camstream.datasets import Dataset
from camstream.fashion_mnist import fetch
from camstream.registry import MANIFEST_FILE, Registry, Version
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.setup import run_in_model_env
from camstream.stack.triton import locate_model_env

FASHION_MODEL = "fashion"
FASHION_DATASET = "fm-small"
# 27 train + 3 val, and 10 test images per class: 400 images, well under a minute.
TRAIN_PER_CLASS = 30
TEST_PER_CLASS = 10


def run_model_module(
    module: str, *args: str | Path, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in the model environment, from the repository root;
    its output captured, its exit status left to the caller."""
    return subprocess.run(
        [str(locate_model_env().bin_dir / "python"), "-m", module, *map(str, args)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def fetch_fashion(datasets_dir: Path, name: str = FASHION_DATASET) -> Dataset:
    """The small Fashion-MNIST subset, as a dataset folder under ``datasets_dir``."""
    return fetch(
        datasets_dir,
        Settings().cache_dir,
        name,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
    )


def train_fashion(
    registry_dir: Path,
    datasets_dir: Path,
    work_dir: Path,
    *,
    model: str = FASHION_MODEL,
    seed: int = 7,
    **options: Any,
) -> Version:
    """Train one version of ``model`` on the small subset into ``registry_dir`` (the
    dataset is fetched into ``datasets_dir``, where the canary finds its images)."""
    dataset = fetch_fashion(datasets_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "dataset_dir": str(dataset.root),
        "model": model,
        "registry_dir": str(registry_dir),
        "cache_dir": str(Settings().cache_dir),
        "seed": seed,
        "max_epochs": 40,
        "explain_per_class": 0,
        "profile_frames": 30,
        **options,
    }
    config_path = work_dir / f"train-{model}-{seed}.json"
    summary_path = work_dir / f"summary-{model}-{seed}.json"
    config_path.write_text(json.dumps(config))
    run_in_model_env(
        locate_model_env(),
        ["training.train", "--config", str(config_path), "--summary", str(summary_path)],
        f"train {model}",
    )
    summary = json.loads(summary_path.read_text())
    return Registry(registry_dir).resolve(str(summary["ref"]))


def register_copy(
    registry: Registry, version: Version, note: str, onnx: bytes | None = None
) -> Version:
    """A new version of ``version.model`` made of ``version``'s files (``onnx`` in place
    of its model.onnx when given) and a card that says ``note``."""
    manifest = version.manifest()
    staging = registry.staging(version.model)
    for path in sorted(version.path.rglob("*")):
        rel = path.relative_to(version.path)
        if path.is_dir() or rel.as_posix() == MANIFEST_FILE:
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    if onnx is not None:
        (staging / "model.onnx").write_bytes(onnx)
    card = json.loads((staging / "card.json").read_text())
    card["variant"] = f"{note} (files of {version.ref})"
    (staging / "card.json").write_text(json.dumps(card, indent=2))
    return registry.register(
        version.model,
        staging,
        dataset=str(manifest["dataset"]),
        dataset_manifest_sha256=str(manifest["dataset_manifest_sha256"]),
        code_version=str(manifest["code_version"]),
    )


def register_broken_onnx(registry: Registry, version: Version) -> Version:
    """A version whose model.onnx is truncated to half its bytes."""
    data = (version.path / "model.onnx").read_bytes()
    return register_copy(registry, version, "broken ONNX", onnx=data[: len(data) // 2])


# Run in the model environment (onnx): IMAGE [N, H, W, 3] -> Gather(axis 1, H-1..0) ->
# what the graph read before, so every image reaches the network upside down.
_FLIP = """
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper

model = onnx.load(sys.argv[1])
graph = model.graph
name = graph.input[0].name
height = graph.input[0].type.tensor_type.shape.dim[1].dim_value
flipped = name + "_flipped"
for node in graph.node:
    node.input[:] = [flipped if i == name else i for i in node.input]
rows = numpy_helper.from_array(np.arange(height - 1, -1, -1, dtype=np.int64), "flip_rows")
graph.initializer.append(rows)
graph.node.insert(0, helper.make_node("Gather", [name, "flip_rows"], [flipped], axis=1))
onnx.checker.check_model(model)
onnx.save(model, sys.argv[2])
"""


def register_altered_preprocessing(registry: Registry, version: Version, work_dir: Path) -> Version:
    """A version serving ``version``'s network on upside-down images, registered with
    ``version``'s evaluation (which it no longer matches)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{version.model}-{version.number}-flipped.onnx"
    subprocess.run(
        [
            str(locate_model_env().bin_dir / "python"),
            "-c",
            _FLIP,
            str(version.path / "model.onnx"),
            str(out),
        ],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return register_copy(registry, version, "altered preprocessing", onnx=out.read_bytes())
