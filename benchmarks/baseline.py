"""The in-process baseline of `camstream bench pipeline`: what a user would write instead.

Not one program but the candidates a user who wants speed would try, measured side by
side in one run on the same frames; the fastest is the baseline, so "the strongest
in-process program" is checked every run instead of asserted. Every candidate decodes
each JPEG and preprocesses it with camstream.imaging (the worker's own code, reduced
decode included) and classifies it with the same ONNX model through onnxruntime, on as
many threads as the machine has cores (``--cores``):

- serial-b1: one loop, batch 1, one session on ``cores`` intra-op threads (the
  obvious program);
- threads-bN: ``cores`` threads, each with its own one-thread session, decoding its
  own frames in the thread and classifying them N at a time;
- pool-bN: a pool of ``cores`` decode threads working one batch ahead of one session
  on ``cores`` intra-op threads, N frames a call.

Runs in the model environment (.venv-model: onnxruntime needs numpy < 2), so it imports
only numpy, cv2, onnxruntime, camstream.imaging and camstream.modelrepo; prints one JSON object:

    .venv-model/bin/python -m benchmarks.baseline --model M.onnx --frames DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from camstream import modelrepo
from camstream.imaging import jpeg_dimensions, jpeg_to_model_input

Batch = npt.NDArray[np.uint8]
# Classifies ``count`` frames (cycling through the given ones); returns when done.
Program = Callable[[list[bytes], int], None]


def model_input(jpeg: bytes) -> Batch:
    """The worker's decode: header dimensions, reduced decode, crop to 224x224 RGB."""
    width, height = jpeg_dimensions(jpeg)
    return jpeg_to_model_input(jpeg, width, height)


def open_session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _classify(session: ort.InferenceSession, images: list[Batch]) -> None:
    probs = session.run([modelrepo.PROBS], {modelrepo.IMAGE: np.stack(images)})[0]
    np.argmax(probs, axis=1)  # the top-1, as a user's program would take it


def _chunks(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


def serial(model: Path, cores: int, batch: int) -> Program:
    """One loop: decode ``batch`` frames, classify them on one ``cores``-thread session."""
    session = open_session(model, cores)

    def run(frames: list[bytes], count: int) -> None:
        for chunk in _chunks(count, batch):
            _classify(session, [model_input(frames[i % len(frames)]) for i in chunk])

    return run


def threads(model: Path, cores: int, batch: int) -> Program:
    """``cores`` threads sharing the frames, each decoding and classifying its own,
    ``batch`` at a time, on its own one-thread session (OpenCV and onnxruntime release
    the GIL, so the threads run in parallel)."""
    sessions = [open_session(model, 1) for _ in range(cores)]

    def run(frames: list[bytes], count: int) -> None:
        chunks = iter(list(_chunks(count, batch)))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work(session: ort.InferenceSession) -> None:
            try:
                while True:
                    with lock:
                        chunk = next(chunks, None)
                    if chunk is None:
                        return
                    _classify(session, [model_input(frames[i % len(frames)]) for i in chunk])
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(s,)) for s in sessions]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]

    return run


def pool(model: Path, cores: int, batch: int) -> Program:
    """A ``cores``-thread decode pool one batch ahead of one ``cores``-thread session."""
    session = open_session(model, cores)
    executor = ThreadPoolExecutor(cores, thread_name_prefix="decode")

    def run(frames: list[bytes], count: int) -> None:
        def decode(chunk: range) -> list[Future[Batch]]:
            return [executor.submit(model_input, frames[i % len(frames)]) for i in chunk]

        pending = [decode(chunk) for chunk in itertools.islice(_chunks(count, batch), 1)]
        for chunk in itertools.islice(_chunks(count, batch), 1, None):
            pending.append(decode(chunk))
            _classify(session, [f.result() for f in pending.pop(0)])
        for futures in pending:
            _classify(session, [f.result() for f in futures])

    return run


@dataclass(frozen=True)
class Candidate:
    name: str
    describe: str
    build: Callable[[Path, int, int], Program]
    batch: int


def candidates(cores: int) -> list[Candidate]:
    """The programs measured; the first is the obvious one (and the old baseline)."""
    one = f"one session on {cores} intra-op threads"
    own = f"{cores} threads, each its own 1-thread session, decoding in the thread"
    ahead = f"{cores}-thread decode pool ahead of one {cores}-thread session"
    return [
        Candidate("serial-b1", f"serial decode+classify, batch 1, {one}", serial, 1),
        Candidate("threads-b1", f"{own}, batch 1", threads, 1),
        Candidate("threads-b4", f"{own}, batch 4", threads, 4),
        Candidate("threads-b8", f"{own}, batch 8", threads, 8),
        Candidate("pool-b8", f"{ahead}, batch 8", pool, 8),
    ]


def measure(
    model: Path, frames: list[bytes], count: int, rounds: int, cores: int
) -> dict[str, object]:
    """Every candidate on ``count`` frames per round; rounds rotate the order so that
    the machine's noise falls on all alike. The best median is the baseline."""
    cv2.setNumThreads(1)
    chosen = candidates(cores)
    programs = {c.name: c.build(model, cores, c.batch) for c in chosen}
    for program in programs.values():  # warm-up: first runs pay onnxruntime's set-up
        program(frames, 4 * cores * 8)
    rates: dict[str, list[float]] = {c.name: [] for c in chosen}
    for r in range(rounds):
        order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
        for candidate in order:
            started = time.perf_counter()
            programs[candidate.name](frames, count)
            rates[candidate.name].append(count / (time.perf_counter() - started))
    figures = {
        c.name: {
            "fps": round(statistics.median(rates[c.name]), 1),
            "fps_rounds": [round(x, 1) for x in rates[c.name]],
            "what": c.describe,
        }
        for c in chosen
    }
    best = max(figures, key=lambda name: float(figures[name]["fps"]))  # type: ignore[arg-type]
    return {
        "best": best,
        "fps": figures[best]["fps"],
        "candidates": figures,
        "frames": count,
        "rounds": rounds,
        "cores": cores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=Path, required=True, help="Folder of *.jpg frames.")
    parser.add_argument(
        "--cores", type=int, default=len(os.sched_getaffinity(0)), help="Threads in all."
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--count", type=int, default=0, help="Frames per round, cycling (default: each once)."
    )
    args = parser.parse_args(argv)
    frames = [path.read_bytes() for path in sorted(args.frames.glob("*.jpg"))]
    if not frames:
        print(f"no *.jpg frames in {args.frames}", file=sys.stderr)
        return 2
    figures = measure(args.model, frames, args.count or len(frames), args.rounds, args.cores)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
