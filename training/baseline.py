"""Build the drift reference profile of one model version from a calibration set.

Runs in the model environment (onnxruntime, numpy < 2):

    .venv-model/bin/python -m training.baseline --model triton_repo/efficientnet_lite0 \
        --version 1 --frames 200 VIDEO_OR_FOLDER...

Frames are sampled evenly from each video (or every image of a folder) and go the way a
served frame goes, so the reference has no training-serving skew: scaled to fit and
JPEG-encoded as a producer with default camera settings sends them (``as_produced``),
then decoded at reduced size and measured exactly as the worker does
(``as_served``, the calls of streams.pipeline.prepare; tests/unit/test_baseline.py
proves both). They are classified with the exported ONNX model and summarised: the
top-1 label distribution, the confidences, and each image statistic. The profile is
written beside the model as reference_profile.json; its id (model, version, recipe,
hashes) is what every drift record names.

Runs in the model environment, so it imports only numpy, OpenCV, onnxruntime and
camstream's stdlib-level modules (imaging, errors, modelrepo).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.errors import CamstreamError, ConfigError
from camstream.imaging import (
    FINGERPRINT,
    encode_jpeg,
    fit_within,
    image_statistics,
    jpeg_to_model_input,
)

if TYPE_CHECKING:  # onnxruntime is imported where a model is loaded: the application
    import onnxruntime as ort  # env (tests/unit/test_baseline.py) has none

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

# What a producer sends with default camera settings (camstream.cameras.CameraSpec's
# max_width, max_height and jpeg_quality, applied by producers.producer); the model env
# cannot import those modules, so tests/unit/test_baseline.py keeps these equal to them.
PRODUCER_MAX_WIDTH = 1280
PRODUCER_MAX_HEIGHT = 720
PRODUCER_JPEG_QUALITY = 85
# How a frame becomes statistics; part of the profile id, so a new recipe is a new profile.
RECIPE = "producer-jpeg-q85-fit1280x720/worker-decode"

Image = npt.NDArray[np.uint8]


def as_produced(bgr: Image, quality: int = PRODUCER_JPEG_QUALITY) -> tuple[bytes, int, int]:
    """A camera frame as a producer with default settings publishes it: the JPEG and the
    width and height its headers declare."""
    image = fit_within(bgr, PRODUCER_MAX_WIDTH, PRODUCER_MAX_HEIGHT)
    height, width = image.shape[:2]
    return encode_jpeg(image, quality), width, height


def as_served(jpeg: bytes, width: int, height: int) -> tuple[Image, dict[str, float]]:
    """The model input and image statistics the worker makes of a published JPEG."""
    rgb = jpeg_to_model_input(jpeg, width, height)
    return rgb, image_statistics(rgb)


def sample_frames(source: Path, count: int) -> Iterator[Image]:
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None:
                    yield np.asarray(image, dtype=np.uint8)
        return
    cap = cv2.VideoCapture(str(source))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        raise ConfigError(f"cannot read video {source}")
    wanted = set(np.linspace(0, total - 1, num=min(count, total)).astype(int).tolist())
    for index in range(total):
        ok, image = cap.read()
        if not ok:
            break
        if index in wanted:
            yield np.asarray(image, dtype=np.uint8)
    cap.release()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model(model_dir: Path, version: str) -> tuple[Path, list[str], ort.InferenceSession]:
    """The exported ONNX model of one version, its label names and a CPU session."""
    import onnxruntime as ort

    onnx_path = modelrepo.onnx_path(model_dir.parent, model_dir.name, version)
    labels = modelrepo.read_labels(modelrepo.labels_path(model_dir.parent, model_dir.name))
    if not onnx_path.is_file():
        raise ConfigError(f"export the model first: {onnx_path} is missing")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return onnx_path, labels, session


def classify(session: ort.InferenceSession, rgb: Image) -> tuple[int, float]:
    """Top-1 class index and probability of one 224x224 RGB model input."""
    probs = session.run([modelrepo.PROBS], {modelrepo.IMAGE: rgb[None]})[0][0]
    best = int(np.argmax(probs))
    return best, float(probs[best])


def build_profile(
    model_dir: Path, version: str, sources: list[Path], count: int
) -> dict[str, object]:
    onnx_path, labels, session = load_model(model_dir, version)
    frames = (image for source in sources for image in sample_frames(source, count))
    return profile_images(
        onnx_path, labels, session, frames, model_dir.name, version, [s.name for s in sources]
    )


def profile_images(
    onnx_path: Path,
    labels: list[str],
    session: ort.InferenceSession,
    images: Iterable[Image],
    name: str,
    version: str,
    sources: list[str],
) -> dict[str, object]:
    """The reference profile of BGR ``images`` sent the way a camera's frames are, as
    classified by ``session`` (the model at ``onnx_path``); ``sources`` name where the
    images came from (part of the id). training.train builds a new version's profile
    with it from a sample of its training images."""
    top1: Counter[str] = Counter()
    confidence: list[float] = []
    stats: dict[str, list[float]] = {}
    for image in images:
        rgb, image_stats = as_served(*as_produced(image))
        best, score = classify(session, rgb)
        top1[labels[best]] += 1
        confidence.append(round(score, 6))
        for stat, value in image_stats.items():
            if stat != FINGERPRINT:  # an identity, not a distribution
                stats.setdefault(stat, []).append(round(value, 6))
    total = sum(top1.values())
    if total == 0:
        raise ConfigError("the calibration set yielded no frames")
    digest = hashlib.sha256()
    digest.update(file_hash(onnx_path).encode())
    digest.update(RECIPE.encode())  # another way to make statistics: another profile
    digest.update(",".join(sorted(stats)).encode())  # another statistic set: another profile
    for source in sources:
        digest.update(source.encode())
    return {
        "id": f"{name}-v{version}-{digest.hexdigest()[:12]}",
        "model": {"name": name, "version": version},
        "frames": total,
        "recipe": RECIPE,
        "sources": sources,
        "labels": {label: n / total for label, n in top1.most_common()},
        "confidence": confidence,
        "image_stats": stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="triton_repo/<model> folder")
    parser.add_argument("--version", default="1")
    parser.add_argument("--frames", type=int, default=200, help="frames sampled per video")
    parser.add_argument("--out", type=Path, help="default: <model>/reference_profile.json")
    parser.add_argument("sources", type=Path, nargs="+")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        profile = build_profile(args.model, args.version, args.sources, args.frames)
    except CamstreamError as exc:
        sys.stderr.write(f"baseline: {exc}\n")
        return 2 if isinstance(exc, ConfigError) else 1
    out = args.out or args.model / "reference_profile.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    tmp.replace(out)
    sys.stderr.write(f"baseline: {profile['id']} from {profile['frames']} frames -> {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
