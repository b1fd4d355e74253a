"""benchmarks.triton: a sweep cell's figures, the best setting, and the table."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.triton import best_cell, cell_figures, percentiles, table


def _cell(concurrency: int, batch: int, per_s: float, p99: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "batch": batch,
        "requests": 10,
        "images_per_s": per_s,
        "latency_ms": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99},
    }


def test_a_cells_throughput_counts_images_not_requests() -> None:
    # Given 100 requests of 8 images answered in 2 s, latencies 1..100 ms
    latencies = [float(ms) for ms in range(1, 101)]
    # When the cell's figures are made
    figures = cell_figures(4, 8, latencies, 2.0, cpu_s=0.5)
    # Then throughput is images per second, and the percentiles are the requests'
    assert figures["images"] == 800 and figures["images_per_s"] == 400.0
    assert figures["requests"] == 100
    assert figures["latency_ms"] == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert figures["client_cores"] == 0.25


def test_percentiles_are_ordered_and_defined_for_one_sample() -> None:
    assert percentiles([3.0]) == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
    q = percentiles([5.0, 1.0, 9.0, 2.0])
    assert q["p50"] <= q["p95"] <= q["p99"] <= 9.0


def test_the_best_setting_is_the_fastest_within_the_p99_bound() -> None:
    # Given a fast cell over the bound, and two within it
    cells = [
        _cell(1, 1, 100.0, 5.0),
        _cell(8, 16, 900.0, 80.0),  # fastest, but p99 over 25 ms
        _cell(4, 8, 600.0, 24.0),
        _cell(2, 4, 400.0, 12.0),
    ]
    # Then the best is the fastest of those within it
    best = best_cell(cells, 25.0)
    assert best is not None and (best["concurrency"], best["batch"]) == (4, 8)
    # And a bound at exactly a cell's p99 admits it
    best = best_cell(cells, 80.0)
    assert best is not None and best["batch"] == 16


def test_equal_throughput_prefers_the_lower_p99_then_fewer_callers() -> None:
    cells = [_cell(8, 4, 500.0, 20.0), _cell(4, 4, 500.0, 20.0), _cell(16, 1, 500.0, 9.0)]
    best = best_cell(cells, 25.0)
    assert best is not None and (best["concurrency"], best["batch"]) == (16, 1)
    best = best_cell(cells[:2], 25.0)
    assert best is not None and best["concurrency"] == 4


def test_no_cell_within_the_bound_names_no_best() -> None:
    assert best_cell([_cell(1, 1, 100.0, 30.0)], 25.0) is None
    assert best_cell([], 25.0) is None


@pytest.mark.parametrize("best", [{"concurrency": 2, "batch": 4}, None])
def test_table_has_a_row_per_cell_and_says_the_best(best: dict[str, int] | None) -> None:
    cells = [cell_figures(c, b, [1.0, 2.0, 3.0], 1.0) for b in (1, 4) for c in (1, 2)]
    figures = {
        "model": "m",
        "version": "latest",
        "address": "127.0.0.1:1",
        "server": "local",
        "seconds_per_cell": 1.0,
        "p99_bound_ms": 25.0,
        "cells": cells,
        "best": best,
        "best_images_per_s": 12.0 if best else None,
    }
    text = table(figures).splitlines()
    assert len(text) == 2 + len(cells) + 1
    marked = [line for line in text if line.endswith(" *")]
    if best is None:
        assert not marked and text[-1].startswith("best: none")
    else:
        assert len(marked) == 1 and marked[0].split()[:2] == ["2", "4"]
        assert "2 callers x batch 4" in text[-1]
