"""Build the drift reference profile of one model version from a calibration set.

Runs in the model environment (onnxruntime, numpy < 2):

    .venv-model/bin/python -m training.baseline --model triton_repo/efficientnet_lite0 \
        --version 1 --frames 200 VIDEO_OR_FOLDER...

Frames are sampled evenly from each video (or every image of a folder), prepared with
camstream.imaging exactly as the worker prepares them, classified with the exported
ONNX model, and summarised: the top-1 label distribution, the confidences, and each
image statistic. The profile is written beside the model as reference_profile.json and
its id (model, version, hashes) is what every drift record names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from camstream.imaging import FINGERPRINT, image_statistics, to_model_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def sample_frames(source: Path, count: int) -> Iterator[np.ndarray]:
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None:
                    yield image
        return
    cap = cv2.VideoCapture(str(source))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        raise SystemExit(f"baseline: cannot read video {source}")
    wanted = set(np.linspace(0, total - 1, num=min(count, total)).astype(int).tolist())
    for index in range(total):
        ok, image = cap.read()
        if not ok:
            break
        if index in wanted:
            yield image
    cap.release()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model(model_dir: Path, version: str) -> tuple[Path, list[str], ort.InferenceSession]:
    """The exported ONNX model of one version, its label names and a CPU session."""
    onnx_path = model_dir / version / "model.onnx"
    labels_path = model_dir / "labels.txt"
    if not onnx_path.is_file() or not labels_path.is_file():
        raise SystemExit(f"baseline: export the model first ({onnx_path}, {labels_path})")
    labels = [line.split(",")[0].strip() for line in labels_path.read_text().splitlines()]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return onnx_path, labels, session


def classify(session: ort.InferenceSession, rgb: np.ndarray) -> tuple[int, float]:
    """Top-1 class index and probability of one 224x224 RGB model input."""
    probs = session.run(["PROBS"], {"IMAGE": rgb[None]})[0][0]
    best = int(np.argmax(probs))
    return best, float(probs[best])


def build_profile(model_dir: Path, version: str, sources: list[Path], count: int) -> dict:
    onnx_path, labels, session = load_model(model_dir, version)

    top1: Counter[str] = Counter()
    confidence: list[float] = []
    stats: dict[str, list[float]] = {}
    for source in sources:
        for image in sample_frames(source, count):
            rgb = to_model_input(image)
            best, score = classify(session, rgb)
            top1[labels[best]] += 1
            confidence.append(round(score, 6))
            for name, value in image_statistics(rgb).items():
                if name != FINGERPRINT:  # an identity, not a distribution
                    stats.setdefault(name, []).append(round(value, 6))
    total = sum(top1.values())
    if total == 0:
        raise SystemExit("baseline: the calibration set yielded no frames")
    digest = hashlib.sha256()
    digest.update(file_hash(onnx_path).encode())
    digest.update(",".join(sorted(stats)).encode())  # another statistic set: another profile
    for source in sources:
        digest.update(source.name.encode())
    return {
        "id": f"{model_dir.name}-v{version}-{digest.hexdigest()[:12]}",
        "model": {"name": model_dir.name, "version": version},
        "frames": total,
        "sources": [source.name for source in sources],
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
    profile = build_profile(args.model, args.version, args.sources, args.frames)
    out = args.out or args.model / "reference_profile.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    tmp.replace(out)
    sys.stderr.write(f"baseline: {profile['id']} from {profile['frames']} frames -> {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
