"""`camstream bench triton`: one Triton server's throughput and latency over a sweep of
client concurrency x request batch size, and the best setting within a p99 bound.

Each cell of the sweep: ``concurrency`` gRPC callers (asyncio, one channel), each
sending requests of ``batch`` images back to back for ``seconds``; a caller's first
request is not timed (it opens the stream). Figures per cell:

- images_per_s: images answered / (last answer - start);
- latency_ms p50/p95/p99: per request (a request carries ``batch`` images), client side;
- client_cores: this process's CPU time / wall time, the load generator's own share of
  the machine (on a small CPU it competes with the server it measures).

The best setting is the cell with the highest throughput whose p99 is within
``p99_ms``; None when no cell is. The images are a fixed pseudo-random uint8 batch of
camstream's model input shape (the network's cost does not depend on the pixels).

The server is either started here on the model repository (its own ports, stopped at
the end, as `bench pipeline` starts its own stack) or a running one at an address.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camstream import modelrepo
from camstream.settings import Settings

IMAGE_SHAPE = (224, 224, 3)


@dataclass(frozen=True)
class SweepConfig:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch: tuple[int, ...] = (1, 4, 8, 16)
    seconds: float = 3.0
    p99_ms: float = 25.0
    address: str | None = None  # a running server's gRPC address; None: start one here


def percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (inclusive method: defined from two samples on)."""
    if len(latencies_ms) < 2:
        only = round(float(latencies_ms[0]), 2) if latencies_ms else 0.0
        return {"p50": only, "p95": only, "p99": only}
    q = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2)}


def cell_figures(
    concurrency: int,
    batch: int,
    latencies_ms: Sequence[float],
    elapsed_s: float,
    cpu_s: float = 0.0,
) -> dict[str, Any]:
    """One cell's figures from its requests' latencies and its wall time."""
    images = len(latencies_ms) * batch
    return {
        "concurrency": concurrency,
        "batch": batch,
        "requests": len(latencies_ms),
        "images": images,
        "seconds": round(elapsed_s, 3),
        "images_per_s": round(images / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "latency_ms": percentiles(latencies_ms),
        "client_cores": round(cpu_s / elapsed_s, 2) if elapsed_s > 0 else 0.0,
    }


def best_cell(cells: Sequence[dict[str, Any]], p99_ms: float) -> dict[str, Any] | None:
    """The highest-throughput cell with p99 <= ``p99_ms`` (ties: the lower p99, then the
    fewer callers); None when none is within the bound."""
    within = [c for c in cells if c["requests"] and c["latency_ms"]["p99"] <= p99_ms]
    if not within:
        return None
    return max(
        within,
        key=lambda c: (c["images_per_s"], -c["latency_ms"]["p99"], -c["concurrency"]),
    )


async def measure_cell(
    address: str,
    model: str,
    version: str,
    images: np.ndarray,
    concurrency: int,
    batch: int,
    seconds: float,
) -> dict[str, Any]:
    """``concurrency`` callers sending ``batch`` images a request for ``seconds``."""
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(url=address)
    request = InferInput(modelrepo.IMAGE, [batch, *IMAGE_SHAPE], "UINT8")
    request.set_data_from_numpy(images[:batch])
    outputs = [InferRequestedOutput(modelrepo.PROBS)]
    latencies_ms: list[float] = []
    last_done = 0.0

    async def infer() -> None:
        await client.infer(model, [request], model_version=version, outputs=outputs)

    async def caller(deadline: float) -> None:
        nonlocal last_done
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await infer()
            last_done = time.perf_counter()
            latencies_ms.append((last_done - sent) * 1000)

    try:
        await asyncio.gather(*(infer() for _ in range(concurrency)))  # untimed: warm
        cpu_started = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(caller(started + seconds) for _ in range(concurrency)))
        cpu_s = time.process_time() - cpu_started
    finally:
        await client.close()
    return cell_figures(concurrency, batch, latencies_ms, last_done - started, cpu_s)


async def sweep(
    address: str, model: str, version: str, config: SweepConfig
) -> list[dict[str, Any]]:
    """Every cell, batch size by batch size, concurrency rising within each."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(config.batch), *IMAGE_SHAPE), dtype=np.uint8)
    return [
        await measure_cell(address, model, version, images, c, b, config.seconds)
        for b in config.batch
        for c in config.concurrency
    ]


def run(settings: Settings, config: SweepConfig) -> dict[str, Any]:
    """The sweep against ``config.address``, or against a server started here."""
    if config.address is not None:
        return _figures(settings, config, config.address, "running", None)
    from camstream.stack.setup import prepare
    from camstream.stack.triton import TritonServer

    prepare(settings)  # the exported model (quick when up to date)
    with tempfile.TemporaryDirectory(prefix="camstream-bench-triton-") as tmp:
        server = TritonServer(
            settings.model_repo,
            cache_dir=settings.cache_dir,
            log_dir=Path(tmp),
            ready_models=(settings.model_name,),
        )
        with server:
            return _figures(settings, config, server.grpc_address, "local", server.startup_s)


def _figures(
    settings: Settings,
    config: SweepConfig,
    address: str,
    server: str,
    startup_s: float | None,
) -> dict[str, Any]:
    started = time.monotonic()
    cells = asyncio.run(sweep(address, settings.model_name, settings.model_version, config))
    best = best_cell(cells, config.p99_ms)
    return {
        "server": server,
        "address": address,
        "model": settings.model_name,
        "version": settings.model_version or "latest",
        "seconds_per_cell": config.seconds,
        "p99_bound_ms": config.p99_ms,
        "cells": cells,
        "best": None if best is None else {k: best[k] for k in ("concurrency", "batch")},
        "best_images_per_s": None if best is None else best["images_per_s"],
        "sweep_s": round(time.monotonic() - started, 1),
        "server_startup_s": None if startup_s is None else round(startup_s, 1),
    }


def table(figures: dict[str, Any]) -> str:
    best = figures["best"]
    lines = [
        f"Triton {figures['model']}:{figures['version']} at {figures['address']} "
        f"({figures['server']} server), {figures['seconds_per_cell']:g} s per cell",
        f"{'callers':>7} {'batch':>5} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'requests':>8} {'client cores':>12}",
    ]
    for cell in figures["cells"]:
        latency = cell["latency_ms"]
        mark = " *" if best == {"concurrency": cell["concurrency"], "batch": cell["batch"]} else ""
        lines.append(
            f"{cell['concurrency']:>7} {cell['batch']:>5} {cell['images_per_s']:>9.1f} "
            f"{latency['p50']:>8.2f} {latency['p95']:>8.2f} {latency['p99']:>8.2f} "
            f"{cell['requests']:>8} {cell['client_cores']:>12.2f}{mark}"
        )
    if best is None:
        lines.append(f"best: none; no cell kept p99 within {figures['p99_bound_ms']:g} ms")
    else:
        lines.append(
            f"best (*): {best['concurrency']} callers x batch {best['batch']}: "
            f"{figures['best_images_per_s']:.1f} images/s with p99 within "
            f"{figures['p99_bound_ms']:g} ms"
        )
    return "\n".join(lines)
