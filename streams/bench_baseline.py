"""The in-process baseline of `camstream bench pipeline`: what a user would write instead.

One loop decodes each JPEG, preprocesses it with camstream.imaging (the worker's own
code) and classifies it with the same ONNX model through onnxruntime, batch 1, on the
same number of threads the Triton model uses in total. Runs in the model environment
(.venv-model: onnxruntime needs numpy < 2), so it imports only numpy, cv2, onnxruntime
and camstream.imaging; prints one JSON object.

    .venv-model/bin/python -m streams.bench_baseline --model M.onnx --frames DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from camstream.imaging import jpeg_dimensions, jpeg_to_model_input


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=Path, required=True, help="Folder of *.jpg frames.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--count", type=int, default=0, help="Frames per round, cycling (default: each once)."
    )
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    frames = [path.read_bytes() for path in sorted(args.frames.glob("*.jpg"))]
    if not frames:
        print(f"no *.jpg frames in {args.frames}", file=sys.stderr)
        return 2

    def classify(jpeg: bytes) -> int:
        width, height = jpeg_dimensions(jpeg)
        image = jpeg_to_model_input(jpeg, width, height)
        probs = session.run(None, {name: image[np.newaxis]})[0]
        return int(np.argmax(probs[0]))

    for jpeg in frames[:10]:  # warm-up
        classify(jpeg)
    rates, latencies = [], []
    count = args.count or len(frames)
    for _round in range(args.rounds):
        started = time.perf_counter()
        for i in range(count):
            jpeg = frames[i % len(frames)]
            t0 = time.perf_counter()
            classify(jpeg)
            latencies.append((time.perf_counter() - t0) * 1000)
        rates.append(count / (time.perf_counter() - started))
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        json.dumps(
            {
                "fps_rounds": [round(r, 1) for r in rates],
                "fps": round(statistics.median(rates), 1),
                "latency_ms_p50": round(quantiles[49], 2),
                "latency_ms_p99": round(quantiles[98], 2),
                "frames": count,
                "threads": args.threads,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
