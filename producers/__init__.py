"""Camera producers: camera sources -> JPEG frames -> camstream.frames.

Modules, in the order a frame passes them:

- sources: open/read/close a camera (video file, RTSP/HTTP stream, V4L2 device, image
  folder, synthetic pattern) and the source exception tree;
- feed: rate control (sampling, pacing), back-pressure (wait vs. drop_oldest) and
  reconnects with exponential backoff and jitter;
- producer: per-camera threads that fit, encode and size-check frames, and
  run_producers, which runs many cameras in one process and stops cleanly;
- delivery: the shared idempotent Kafka producer, its drop policy and delivery reports;
- stats: per-camera Prometheus metrics and run counters (the status line).

``camstream bench producer`` lives in benchmarks.producer.
"""
