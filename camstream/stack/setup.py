"""Idempotent set-up of everything the local stack needs beyond the Python environments:
Kafka's jars, the sample videos and photos, the exported model and its drift
reference profile. Each step is cached and returns at once when already done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from camstream import modelrepo
from camstream.cameras import CameraSpec
from camstream.errors import ServiceError
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import SampleAssets, ensure_assets
from camstream.stack.kafka import ensure_kafka_libs
from camstream.stack.triton import ModelEnv, locate_model_env

log = structlog.get_logger(__name__)

# The conveyor camera: Fashion-MNIST test images per class, and its ground-truth file.
CONVEYOR_PER_CLASS = 30
CONVEYOR_TRUTH = "labels.csv"


class SetupError(ServiceError):
    """A set-up step failed; the message names the step and how to retry it."""


@dataclass(frozen=True)
class Prepared:
    assets: SampleAssets
    kafka_libs: Path
    model_env: ModelEnv
    conveyor: Path
    seconds: float


def run_in_model_env(env: ModelEnv, args: list[str], step: str, capture: bool = True) -> None:
    """Run ``python -m ARGS`` in the model environment from the repository root.

    ``capture=False`` lets the child write to this terminal (progress bars, reports) and
    only reports its exit status; with capture its stderr's tail goes into the error.
    """
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(REPO_ROOT)
    command = [str(env.bin_dir / "python"), "-m", *args]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environ, capture_output=capture, text=True, check=False
    )
    if result.returncode != 0:
        detail = f":\n{result.stderr[-3000:]}" if capture else " (its messages are above)"
        raise SetupError(
            f"step '{step}' failed (exit {result.returncode}, {' '.join(command)}){detail}"
        )


def ensure_model(settings: Settings, env: ModelEnv, assets: SampleAssets) -> None:
    """Export the pretrained model into the model repository (version 1), and build the
    reference profile of the version served (``model_version``, else the latest)."""
    model_dir = modelrepo.model_dir(settings.model_repo, settings.model_name)
    run_in_model_env(
        env,
        [
            "training.export",
            "--repo",
            str(settings.model_repo),
            "--labels",
            str(assets.imagenet_classes),
        ],
        "export the model",
    )
    version = modelrepo.resolve_version(
        settings.model_repo, settings.model_name, settings.model_version
    )
    onnx = model_dir / str(version) / modelrepo.ONNX_FILE
    profile = settings.reference_profile_path
    # Rebuilt when the model or the code that measures frames changed (the profile must
    # come from the serving decode: training/baseline.py uses camstream.imaging).
    makers = (onnx, REPO_ROOT / "training" / "baseline.py", REPO_ROOT / "camstream" / "imaging.py")
    if not profile.exists() or profile.stat().st_mtime < max(p.stat().st_mtime for p in makers):
        run_in_model_env(
            env,
            [
                "training.baseline",
                "--model",
                str(model_dir),
                "--version",
                str(version),
                "--out",
                str(profile),
                str(assets.vtest_video),
                str(assets.bikes_video),
            ],
            "build the drift reference profile",
        )


def ensure_conveyor(cache_dir: Path, per_class: int = CONVEYOR_PER_CLASS) -> Path:
    """The conveyor camera's folder: Fashion-MNIST test images as a product camera would
    see them (upscaled to 224x224, JPEG), classes interleaved, each file named
    ``NNNN-<label>.jpg`` and listed in ``labels.csv``, so live accuracy can be measured
    against the ground truth. Built once from the cached dataset; returns the folder."""
    import csv

    import cv2
    import numpy as np

    from camstream import fashion_mnist

    folder = cache_dir / "assets" / "conveyor"
    truth = folder / CONVEYOR_TRUTH
    if truth.is_file():
        return folder
    files = fashion_mnist.ensure_files(cache_dir)
    images = fashion_mnist.read_idx(files[("test", "images")])
    labels = fashion_mnist.read_idx(files[("test", "labels")])
    rng = np.random.default_rng(0)
    chosen = [
        int(i)
        for label in range(len(fashion_mnist.LABELS))
        for i in np.flatnonzero(labels == label)[:per_class]
    ]
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    staging = folder.with_name(".conveyor-staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows = []
    for n, index in enumerate(order):
        label = fashion_mnist.LABELS[int(labels[index])]
        name = f"{n:04d}-{label}.jpg"
        grey = cv2.resize(images[index], (224, 224), interpolation=cv2.INTER_CUBIC)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
        if not ok:
            raise SetupError(f"could not encode conveyor image {name}")
        (staging / name).write_bytes(jpeg.tobytes())
        rows.append((name, label, f"fashion-mnist:test:{index}"))
    with (staging / CONVEYOR_TRUTH).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "origin"])
        writer.writerows(rows)
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    log.info("setup.conveyor", folder=str(folder), images=len(rows))
    return folder


def prepare(settings: Settings) -> Prepared:
    started = time.monotonic()
    env = locate_model_env()
    kafka_libs = ensure_kafka_libs(settings.cache_dir)
    assets = ensure_assets(settings.cache_dir)
    ensure_model(settings, env, assets)
    conveyor = ensure_conveyor(settings.cache_dir)
    seconds = time.monotonic() - started
    log.info("setup.done", seconds=round(seconds, 1))
    return Prepared(assets, kafka_libs, env, conveyor, seconds)


def sample_cameras(assets: SampleAssets, conveyor: Path | None = None) -> list[CameraSpec]:
    """The sample cameras: a fixed street camera and a bike-lane clip, both looping, and,
    given its folder, ``cam-conveyor``: product photos with ground truth (labels.csv)."""
    cameras = [
        CameraSpec(
            id="cam-street",
            source=str(assets.vtest_video),
            fps=10,
            loop=True,
            site="sample-city",
            zone="pedestrian-street",
            confidence_threshold=0.2,
        ),
        CameraSpec(
            id="cam-bikes",
            source=str(assets.bikes_video),
            fps=10,
            loop=True,
            site="sample-city",
            zone="bike-lane",
            confidence_threshold=0.2,
        ),
    ]
    if conveyor is not None:
        cameras.append(
            CameraSpec(
                id="cam-conveyor",
                source=str(conveyor),
                fps=5,
                loop=True,
                site="sample-warehouse",
                zone="conveyor",
                indoor=True,
                confidence_threshold=0.5,
            )
        )
    return cameras
