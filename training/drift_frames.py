"""Per-frame model outputs and image statistics of real videos, for the drift bench.

Runs in the model environment (onnxruntime, numpy < 2); the application environment
has no onnxruntime, so `camstream bench drift` runs this once and caches the result:

    .venv-model/bin/python -m training.drift_frames --model triton_repo/efficientnet_lite0 \
        --out frames.npz --variant original --variant dark --variant blur VIDEO...

Every frame goes the worker's way, as the reference profile's frames do
(training.baseline): scaled to fit and JPEG-encoded as a producer does, decoded at
reduced size and measured as the worker does, classified by the exported ONNX model.
Variants are injected at the camera, before encoding: ``dark`` multiplies the pixels
by (1 - darken), ``blur`` is a Gaussian blur of blur-sigma pixels at the camera's
resolution. The npz holds, per ``<video>/<variant>``: ``labels`` (class
index), ``scores`` (top-1 probability), ``stats`` (frames x statistics), and once:
``label_names`` and ``stat_names``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from camstream.errors import ConfigError
from training.baseline import PRODUCER_JPEG_QUALITY, as_produced, as_served, classify, load_model

VARIANTS = ("original", "dark", "blur")


def inject(bgr: np.ndarray, variant: str, darken: float, blur_sigma: float) -> np.ndarray:
    """The frame as the camera would send it under one injected shift."""
    if variant == "original":
        return bgr
    if variant == "dark":
        return np.clip(bgr.astype(np.float32) * (1.0 - darken), 0, 255).astype(np.uint8)
    if variant == "blur":
        return cv2.GaussianBlur(bgr, (0, 0), blur_sigma)
    raise ConfigError(f"drift_frames: unknown variant {variant!r}; choose from {VARIANTS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="triton_repo/<model> folder")
    parser.add_argument("--version", default="1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", action="append", choices=VARIANTS, default=[])
    parser.add_argument("--darken", type=float, default=0.4)
    parser.add_argument("--blur-sigma", type=float, default=3.0)
    parser.add_argument("--jpeg-quality", type=int, default=PRODUCER_JPEG_QUALITY)
    parser.add_argument("videos", type=Path, nargs="+")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    _onnx, label_names, session = load_model(args.model, args.version)
    arrays: dict[str, np.ndarray] = {"label_names": np.array(label_names)}
    stat_names: list[str] = []
    for video in args.videos:
        for variant in args.variant or ["original"]:
            cap = cv2.VideoCapture(str(video))
            if not cap.isOpened():
                raise SystemExit(f"drift_frames: cannot read video {video}")
            labels: list[int] = []
            scores: list[float] = []
            rows: list[list[float]] = []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                shifted = inject(frame, variant, args.darken, args.blur_sigma)
                rgb, stats = as_served(*as_produced(shifted, args.jpeg_quality))
                best, score = classify(session, rgb)
                stat_names = stat_names or list(stats)
                labels.append(best)
                scores.append(score)
                rows.append([stats[name] for name in stat_names])
            cap.release()
            if not labels:
                raise SystemExit(f"drift_frames: no frames in {video}")
            key = f"{video.stem}/{variant}"
            arrays[f"{key}/labels"] = np.array(labels, dtype=np.int32)
            arrays[f"{key}/scores"] = np.array(scores, dtype=np.float64)
            arrays[f"{key}/stats"] = np.array(rows, dtype=np.float64)
            sys.stderr.write(f"drift_frames: {key}: {len(labels)} frames\n")
    arrays["stat_names"] = np.array(stat_names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
