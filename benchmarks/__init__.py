"""Benchmarks: `camstream bench pipeline|producer|drift`, apart from the runtime packages.

Each module measures one room against what a user would otherwise write, in the same
run, and returns its figures as a dict (the CLI prints a table or the JSON):

- pipeline: the whole local stack against the strongest in-process onnxruntime program
  (baseline, run in the model environment) and bare Triton, plus end-to-end latency
  under paced load and the load generator's own cost;
- baseline: the in-process candidates (``python -m benchmarks.baseline``, model env);
- producer: the producer's frames/s per core against bare OpenCV read+encode;
- drift: the drift detector replayed over real video with injected shifts.

This package is a tool: the runtime packages (camstream, producers, streams, training)
never import it; only the CLI's bench commands and the tests do. Importing it has no
dependencies beyond the standard library, so the model environment imports
``benchmarks.baseline`` too.
"""
