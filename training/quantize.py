"""An INT8 variant of one exported model, accepted only if it still answers like FP32.

    .venv-model/bin/python -m training.quantize --onnx triton_repo/efficientnet_lite0/1/model.onnx \
        --frames VIDEO_OR_FOLDER_OR_PHOTO... [--dataset-dir D] [--json]

onnxruntime static quantization (QDQ, per-channel INT8 weights, UINT8 activations:
the U8S8 kernels that AVX-512 VNNI runs) calibrated on real frames. Every frame goes
the served way (training.baseline's ``as_produced`` then ``as_served``: the producer's
JPEG, the worker's decode), so the ranges are those of what Triton will be sent. Each
frame source gives its first half to calibration and its second half to the check; a
single photo is check-only. With ``--dataset-dir`` (a trained model) a sample of the
train split calibrates too, and macro-F1 is measured on the test split.

The gate (``judge``): top-1 agreement with FP32 on the held-out frames >= 99%, and for a
trained model a macro-F1 drop <= 1 point. The speed-up is the median FP32 time over
the median INT8 time of side-by-side runs (alternating, same batch, same threads).
Written beside model.onnx:

    quantize_report.json   the figures, the verdict and how they were measured (always)
    model_int8.onnx        the variant, only when accepted
    model_int8.onnx.json   its provenance: the sha256 of the model.onnx it was made
                           from, which the serving model.py checks before using it

A refused variant writes no model and exits 1 with a message naming the figures; an
INT8 file already there is left as it was. Serving picks the variant with
CAMSTREAM_MODEL_PRECISION=int8 (triton_repo/efficientnet_lite0/1/model.py).

The gate and the timing summary are numpy-only and import in the application env;
onnxruntime is imported where a model is quantized or run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.errors import CamstreamError, ConfigError

if TYPE_CHECKING:  # the application env has no onnxruntime
    import onnxruntime as ort

INT8_FILE = "model_int8.onnx"
INT8_SIDECAR = f"{INT8_FILE}.json"
REPORT_FILE = "quantize_report.json"
MIN_AGREEMENT = 0.99
MAX_F1_DROP = 0.01  # one point of macro-F1
FRAMES_PER_VIDEO = 120  # sampled evenly; half calibrate, half check
CALIBRATION_BATCH = 8
TRAIN_CALIBRATION_IMAGES = 64  # trained models: train-split images added to calibration
TIMING_BATCH = 8
TIMING_RUNS = 7
# Serving runs 2 instances x 1 onnxruntime thread (config.pbtxt): time it that way.
TIMING_THREADS = 1

Image = npt.NDArray[np.uint8]
Probs = npt.NDArray[np.float32]


class QuantizeError(CamstreamError, RuntimeError):
    """The variant could not be made or measured; the message says why."""


# The gate (numpy-only: tested in the application env) -------------------------------


@dataclass(frozen=True)
class Gate:
    """What an INT8 variant must keep of its FP32 model."""

    min_agreement: float = MIN_AGREEMENT
    max_f1_drop: float = MAX_F1_DROP


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: list[str]


def agreement(fp32: Probs, int8: Probs) -> float:
    """Share of rows whose top-1 class is the same in both."""
    if fp32.shape != int8.shape or fp32.ndim != 2:
        raise ValueError(f"probabilities differ in shape: {fp32.shape} vs {int8.shape}")
    if len(fp32) == 0:
        raise ValueError("no frames to compare")
    return float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))


def judge(
    agreement: float,
    frames: int,
    f1_fp32: float | None = None,
    f1_int8: float | None = None,
    gate: Gate = Gate(),
) -> Verdict:
    """Accept or refuse, with one reason per check that names its figures.

    ``f1_*`` are the macro-F1 of both models on the same test split (a trained model),
    both None when the model has none (the pretrained one). No frames refuses: no
    evidence is not agreement."""
    if (f1_fp32 is None) != (f1_int8 is None):
        raise ValueError("give the macro-F1 of both models, or of neither")
    reasons = []
    ok = frames > 0 and agreement >= gate.min_agreement
    reasons.append(
        f"top-1 agreement with FP32 {agreement:.2%} on {frames} held-out real frames "
        f"({'>=' if ok else 'below'} the required {gate.min_agreement:.0%})"
    )
    accepted = ok
    if f1_fp32 is not None and f1_int8 is not None:
        drop = f1_fp32 - f1_int8
        ok = drop <= gate.max_f1_drop + 1e-12
        reasons.append(
            f"macro-F1 {f1_int8:.4f} against FP32 {f1_fp32:.4f} on the test split: a drop of "
            f"{drop * 100:.2f} points ({'within' if ok else 'over'} the allowed "
            f"{gate.max_f1_drop * 100:.0f})"
        )
        accepted = accepted and ok
    return Verdict(accepted, reasons)


@dataclass(frozen=True)
class Timing:
    """Side-by-side timed runs of both sessions on one batch, in milliseconds."""

    fp32_ms: list[float]
    int8_ms: list[float]
    batch: int
    threads: int

    @property
    def speedup(self) -> float:
        """Median FP32 time over median INT8 time (> 1: INT8 is faster)."""
        return statistics.median(self.fp32_ms) / statistics.median(self.int8_ms)

    def summary(self) -> dict[str, Any]:
        return {
            "speedup": round(self.speedup, 3),
            "fp32_median_ms": round(statistics.median(self.fp32_ms), 3),
            "int8_median_ms": round(statistics.median(self.int8_ms), 3),
            "fp32_ms": [round(t, 3) for t in self.fp32_ms],
            "int8_ms": [round(t, 3) for t in self.int8_ms],
            "batch": self.batch,
            "intra_op_threads": self.threads,
            "runs": len(self.fp32_ms),
            "how": "median of alternating FP32/INT8 runs on the same batch after one "
            "warm-up each, same session options",
        }


def time_side_by_side(
    fp32: Callable[[], object], int8: Callable[[], object], runs: int, batch: int, threads: int
) -> Timing:
    """Alternate the two calls ``runs`` times after a warm-up of each, so a noisy
    neighbour slows both alike."""
    fp32()
    int8()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for call, out in ((fp32, times[0]), (int8, times[1])):
            start = time.perf_counter()
            call()
            out.append((time.perf_counter() - start) * 1000.0)
    return Timing(times[0], times[1], batch, threads)


# Frames ------------------------------------------------------------------------------


@dataclass
class Frames:
    """Served-path model inputs: what calibrates and what checks, disjoint."""

    calibration: list[Image] = field(default_factory=list)
    check: list[Image] = field(default_factory=list)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)


def split_halves(images: Sequence[Image]) -> tuple[list[Image], list[Image]]:
    """First half calibrates, second half checks; a lone image only checks."""
    half = len(images) // 2
    return list(images[:half]), list(images[half:])


def real_frames(sources: Sequence[Path], per_video: int = FRAMES_PER_VIDEO) -> Frames:
    """Each source (a video, a folder of images, one photo) as served, split in halves."""
    import cv2

    from training.baseline import as_produced, as_served, sample_frames

    frames = Frames()
    for source in sources:
        if source.is_file() and source.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}:
            bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ConfigError(f"cannot read photo {source}")
            images = [np.asarray(bgr, dtype=np.uint8)]
        elif source.exists():
            images = list(sample_frames(source, per_video))
        else:
            raise ConfigError(f"frame source {source} does not exist")
        served = [as_served(*as_produced(image))[0] for image in images]
        calibrate, check = split_halves(served)
        frames.calibration += calibrate
        frames.check += check
        frames.sources[source.name] = {"calibration": len(calibrate), "check": len(check)}
    if not frames.calibration or not frames.check:
        raise ConfigError(
            f"{len(frames.calibration)} calibration and {len(frames.check)} check frames from "
            f"{[str(s) for s in sources]}: give at least one video or folder of images"
        )
    return frames


# Quantization and measurement (onnxruntime: model env) --------------------------------


def session(path: Path, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, images: Image, batch: int = 16) -> Probs:
    parts = [
        sess.run([modelrepo.PROBS], {modelrepo.IMAGE: images[i : i + batch]})[0]
        for i in range(0, len(images), batch)
    ]
    return np.asarray(np.concatenate(parts), dtype=np.float32)


def quantize(fp32: Path, calibration: Sequence[Image], destination: Path) -> None:
    """Static QDQ quantization of ``fp32`` into ``destination``: per-channel INT8
    weights, UINT8 activations with MinMax ranges from ``calibration``. The softmax
    stays FP32: probabilities at 1/255 steps would tie the top classes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [
        np.stack(calibration[i : i + CALIBRATION_BATCH])
        for i in range(0, len(calibration), CALIBRATION_BATCH)
    ]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, Image] | None:
            batch = next(self._batches, None)
            return None if batch is None else {modelrepo.IMAGE: batch}

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph folding first (onnxruntime's recommended step).
        quant_pre_process(str(fp32), str(prepared))
        graph = onnx.load(str(prepared))
        keep_float = [n.name for n in graph.graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(prepared),
            str(destination),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
        )


def macro_f1_pair(
    fp32: ort.InferenceSession, int8: ort.InferenceSession, dataset_dir: Path, labels: list[str]
) -> dict[str, Any]:
    """Both models' macro-F1 on the test split, on the same images (the serving decode)."""
    from camstream.datasets import Dataset, Split
    from training.evaluate import classification_metrics, split_classes
    from training.predict import load_model_inputs

    dataset = Dataset.load(dataset_dir)
    records = dataset.select(Split.TEST)
    if not records:
        raise ConfigError(f"dataset {dataset.name!r} has no labelled test images")
    images = load_model_inputs([dataset.image_path(r) for r in records])
    truth = [r.label for r in records]
    classes = split_classes(labels, truth)
    result: dict[str, Any] = {"dataset": dataset.name, "split": "test", "n": len(records)}
    for name, sess in (("fp32", fp32), ("int8", int8)):
        pred = [labels[i] for i in predict(sess, images).argmax(axis=1)]
        result[f"macro_f1_{name}"] = classification_metrics(truth, pred, classes)["macro_f1"]
    result["drop_points"] = round((result["macro_f1_fp32"] - result["macro_f1_int8"]) * 100, 3)
    return result


def train_sample(dataset_dir: Path, count: int = TRAIN_CALIBRATION_IMAGES) -> list[Image]:
    """A seeded sample of the train split's images, as served: a trained model's own
    domain belongs in its calibration."""
    from camstream.datasets import Dataset, Split
    from training.evaluate import capped_sample
    from training.predict import load_model_inputs

    dataset = Dataset.load(dataset_dir)
    chosen = capped_sample(dataset.select(Split.TRAIN), count)
    return list(load_model_inputs([dataset.image_path(r) for r in chosen]))


def sha256(path: Path) -> str:
    from training.export import sha256_file

    return sha256_file(path)


def run(
    onnx: Path,
    sources: Sequence[Path],
    dataset_dir: Path | None = None,
    gate: Gate = Gate(),
    per_video: int = FRAMES_PER_VIDEO,
    threads: int = TIMING_THREADS,
    batch: int = TIMING_BATCH,
    runs: int = TIMING_RUNS,
) -> dict[str, Any]:
    """Quantize, measure, judge; install the variant beside ``onnx`` when accepted.
    Returns the report (also written as quantize_report.json beside ``onnx``)."""
    if not onnx.is_file():
        raise ConfigError(f"{onnx} is missing: export the model first (`camstream setup`)")
    started = time.monotonic()
    frames = real_frames(sources, per_video)
    calibration = list(frames.calibration)
    if dataset_dir is not None:
        calibration += train_sample(dataset_dir)
    labels = modelrepo.read_labels(_labels_of(onnx))
    folder = onnx.parent
    fd, tmp_name = tempfile.mkstemp(prefix=".model_int8.", suffix=".onnx", dir=folder)
    os.close(fd)
    candidate = Path(tmp_name)
    try:
        quantize(onnx, calibration, candidate)
        quantized_at = time.monotonic()
        fp32_sess, int8_sess = session(onnx, threads), session(candidate, threads)
        check = np.stack(frames.check)
        fp32_probs, int8_probs = predict(fp32_sess, check), predict(int8_sess, check)
        agreed = agreement(fp32_probs, int8_probs)
        f1 = (
            macro_f1_pair(fp32_sess, int8_sess, dataset_dir, labels)
            if dataset_dir is not None
            else None
        )
        sample = np.ascontiguousarray(check[:batch])
        timing = time_side_by_side(
            lambda: fp32_sess.run(None, {modelrepo.IMAGE: sample}),
            lambda: int8_sess.run(None, {modelrepo.IMAGE: sample}),
            runs,
            len(sample),
            threads,
        )
        verdict = judge(
            agreed,
            len(check),
            f1["macro_f1_fp32"] if f1 else None,
            f1["macro_f1_int8"] if f1 else None,
            gate,
        )
        report: dict[str, Any] = {
            "model": str(onnx),
            "int8_model": str(folder / INT8_FILE) if verdict.accepted else None,
            "accepted": verdict.accepted,
            "reasons": verdict.reasons,
            "agreement": round(agreed, 5),
            "check_frames": len(check),
            "calibration_frames": len(calibration),
            "frame_sources": frames.sources,
            "macro_f1": f1,
            "timing": timing.summary(),
            "gate": asdict(gate),
            "recipe": "onnxruntime quantize_static QDQ, per-channel QInt8 weights, QUInt8 "
            "activations, MinMax calibration, Softmax kept FP32",
            "onnxruntime_version": _ort_version(),
            "fp32_sha256": sha256(onnx),
            "seconds": {
                "quantize": round(quantized_at - started, 2),
                "total": round(time.monotonic() - started, 2),
            },
        }
        if verdict.accepted:
            provenance = {
                "fp32_sha256": report["fp32_sha256"],
                "int8_sha256": sha256(candidate),
                "agreement": report["agreement"],
                "macro_f1": f1,
                "speedup": report["timing"]["speedup"],
            }
            candidate.chmod(0o644)
            os.replace(candidate, folder / INT8_FILE)
            _write_json(folder / INT8_SIDECAR, provenance)
        _write_json(folder / REPORT_FILE, report)
        return report
    finally:
        candidate.unlink(missing_ok=True)


def _labels_of(onnx: Path) -> Path:
    """The version's own labels.txt, else the model's (modelrepo's layout)."""
    own = onnx.parent / modelrepo.LABELS_FILE
    return own if own.is_file() else onnx.parent.parent / modelrepo.LABELS_FILE


def _ort_version() -> str:
    from importlib import metadata

    return metadata.version("onnxruntime")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def summary(report: dict[str, Any]) -> str:
    timing = report["timing"]
    verdict = "accepted" if report["accepted"] else "refused"
    rows = [f"INT8 variant of {report['model']}: {verdict}"]
    rows += [f"  - {reason}" for reason in report["reasons"]]
    rows.append(
        f"  speed-up {timing['speedup']:.2f}x: FP32 {timing['fp32_median_ms']:.1f} ms vs INT8 "
        f"{timing['int8_median_ms']:.1f} ms per batch of {timing['batch']} "
        f"({timing['intra_op_threads']} thread(s), median of {timing['runs']} runs)"
    )
    rows.append(f"  written: {report['int8_model'] or 'no model'}; report {REPORT_FILE}")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="training.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the FP32 model.onnx")
    parser.add_argument(
        "--frames", type=Path, nargs="+", required=True, help="videos, image folders, photos"
    )
    parser.add_argument("--dataset-dir", type=Path, help="a trained model's dataset (macro-F1)")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT)
    parser.add_argument("--max-f1-drop", type=float, default=MAX_F1_DROP)
    parser.add_argument("--frames-per-video", type=int, default=FRAMES_PER_VIDEO)
    parser.add_argument("--threads", type=int, default=TIMING_THREADS)
    parser.add_argument("--batch", type=int, default=TIMING_BATCH)
    parser.add_argument("--runs", type=int, default=TIMING_RUNS)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import cv2

    args = parse_args(argv)
    cv2.setNumThreads(1)
    try:
        report = run(
            args.onnx,
            args.frames,
            args.dataset_dir,
            Gate(args.min_agreement, args.max_f1_drop),
            args.frames_per_video,
            args.threads,
            args.batch,
            args.runs,
        )
    except CamstreamError as exc:
        print(f"training.quantize: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(json.dumps(report, indent=2) if args.json else summary(report))
    if not report["accepted"]:
        print(
            f"training.quantize: refused the INT8 variant of {args.onnx}: "
            + "; ".join(report["reasons"])
            + f"; speed-up {report['timing']['speedup']:.2f}x. No model_int8.onnx written "
            "(serving keeps FP32).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
