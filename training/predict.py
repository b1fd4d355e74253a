"""Inference on image files exactly as serving does it: one preprocessing, one ONNX runner.

Evaluation, pseudo-labelling and training all read images through ``load_model_input``,
the serving path: a JPEG (every camera frame) goes through the worker's own
``camstream.imaging.jpeg_to_model_input``, decoded at the reduced size the worker
decodes it at; any other image (a dataset's PNGs) is decoded whole by ``cv2.imdecode``
and made into the model input by the same ``camstream.imaging.to_model_input``. What a
model is measured on is what it will be sent. ``Classifier`` runs an exported model
(``IMAGE`` uint8 [N, 224, 224, 3] -> ``PROBS`` float32 [N, C]) with onnxruntime on the
CPU.

Runs in the model environment: numpy, OpenCV, onnxruntime (imported where a model is
loaded, so the application env can import this module's pure functions).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from camstream import modelrepo
from camstream.datasets import DatasetError
from camstream.errors import FrameRejected
from camstream.imaging import MODEL_SIZE, jpeg_dimensions, jpeg_to_model_input, to_model_input

if TYPE_CHECKING:  # the application env has no onnxruntime
    import onnxruntime as ort

Image = npt.NDArray[np.uint8]
Probs = npt.NDArray[np.float32]

BATCH = 32
# Latency: the median of this many timed runs (after one warm-up) at batch 1 and 32.
LATENCY_RUNS = 10
LATENCY_RUNS_BATCH = 5


def load_model_input(path: Path) -> Image:
    """The model input (RGB uint8 224x224x3) serving would make of this image file.

    Raises DatasetError naming the file when it cannot be read or decoded.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    unusable = (
        f"image {path} is corrupt or not an image OpenCV decodes ({len(data)} bytes); "
        "replace it, or remove its record from the dataset"
    )
    if data[:2] == b"\xff\xd8":  # a JPEG: exactly the worker's decode
        try:
            return jpeg_to_model_input(data, *jpeg_dimensions(data))
        except FrameRejected as exc:
            raise DatasetError(f"{unusable}: {exc}") from exc
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(unusable)
    return to_model_input(np.asarray(bgr, dtype=np.uint8))


def load_model_inputs(paths: Sequence[Path]) -> Image:
    """Several files' model inputs stacked as [N, 224, 224, 3]."""
    out = np.empty((len(paths), MODEL_SIZE, MODEL_SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_model_input(path)
    return out


def chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Classifier:
    """An exported classifier on onnxruntime's CPU provider with ``threads`` intra-op
    threads (2: the machine this runs on has two cores for training and evaluation)."""

    def __init__(self, onnx: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        if not onnx.is_file():
            raise DatasetError(f"model file {onnx} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session: ort.InferenceSession = ort.InferenceSession(
                str(onnx), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DatasetError(f"cannot load model {onnx}: {exc}") from exc
        self.onnx = onnx
        self.threads = threads

    def _run(self, images: Image) -> Probs:
        (probs,) = self.session.run([modelrepo.PROBS], {modelrepo.IMAGE: images})
        return np.asarray(probs, dtype=np.float32)

    def predict(self, images: Image, batch: int = BATCH) -> Probs:
        """Softmax probabilities [N, C] of model inputs [N, 224, 224, 3]."""
        if images.ndim != 4 or images.shape[1:] != (MODEL_SIZE, MODEL_SIZE, 3):
            raise ValueError(f"expected [N, 224, 224, 3] uint8 images, got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        parts = [self._run(images[i : i + batch]) for i in range(0, len(images), batch)]
        return np.concatenate(parts)

    def predict_files(
        self,
        paths: Sequence[Path],
        batch: int = BATCH,
        on_batch: Callable[[Image, Probs], None] | None = None,
    ) -> Probs:
        """Probabilities of image files, read and classified ``batch`` at a time so that
        memory stays flat; ``on_batch(inputs, probs)`` sees each batch (a progress bar,
        features of the same inputs)."""
        parts: list[Probs] = []
        for group in chunks(paths, batch):
            inputs = load_model_inputs(group)
            probs = self._run(inputs)
            parts.append(probs)
            if on_batch is not None:
                on_batch(inputs, probs)
        if not parts:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.concatenate(parts)

    @property
    def num_classes(self) -> int:
        shape = self.session.get_outputs()[0].shape
        return int(shape[-1]) if isinstance(shape[-1], int) else 0

    def latency(
        self, sample: Image, runs: int = LATENCY_RUNS, runs_batch: int = LATENCY_RUNS_BATCH
    ) -> dict[str, float]:
        """Milliseconds per image: the median of ``runs`` batch-1 calls
        (``batch1_median``) and the median of ``runs_batch`` batch-32 calls divided by 32
        (``batch32_per_image``); ``sample`` is tiled up to 32 images."""
        if len(sample) == 0:
            raise ValueError("latency needs at least one sample image")
        reps = -(-BATCH // len(sample))
        full = np.ascontiguousarray(np.concatenate([sample] * reps)[:BATCH])
        return {
            "batch1_median": _median_ms(lambda: self._run(full[:1]), runs),
            "batch32_per_image": _median_ms(lambda: self._run(full), runs_batch) / BATCH,
        }


def _median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm-up: the first run allocates
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def top1(probs: Probs, labels: Iterable[str]) -> tuple[list[str], list[float]]:
    """Predicted label and its probability for each row."""
    names = list(labels)
    best = probs.argmax(axis=1)
    return [names[i] for i in best], [float(probs[n, i]) for n, i in enumerate(best)]
