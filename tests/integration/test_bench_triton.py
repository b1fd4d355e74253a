"""`camstream bench triton --json` against the real local Triton server (the pytriton
wheel's, started by the command on the exported model, as `camstream up` serves it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from camstream.cli import app

pytestmark = pytest.mark.integration


def test_a_tiny_sweep_measures_every_cell_with_ordered_percentiles() -> None:
    # Given a 2 x 2 sweep of one-second cells on a local server
    concurrency, batches = (1, 2), (1, 4)
    # When the command runs it
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "triton",
            "--json",
            "--local",
            "--seconds",
            "1",
            "--concurrency",
            ",".join(map(str, concurrency)),
            "--batch",
            ",".join(map(str, batches)),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # Then every cell was measured, batch by concurrency, each answering images ...
    cells = figures["cells"]
    assert [(c["batch"], c["concurrency"]) for c in cells] == [
        (b, c) for b in batches for c in concurrency
    ]
    for cell in cells:
        assert cell["images_per_s"] > 0 and cell["requests"] > 0, cell
        assert cell["images"] == cell["requests"] * cell["batch"]
        latency = cell["latency_ms"]
        # ... with percentiles in order
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"], cell
    # And the best setting, when one is named, is a measured cell within the bound
    best = figures["best"]
    if best is not None:
        pick = (best["concurrency"], best["batch"])
        chosen = next(c for c in cells if (c["concurrency"], c["batch"]) == pick)
        assert chosen["latency_ms"]["p99"] <= figures["p99_bound_ms"]
        assert chosen["images_per_s"] == max(
            c["images_per_s"] for c in cells if c["latency_ms"]["p99"] <= figures["p99_bound_ms"]
        )
    assert figures["server"] == "local" and figures["server_startup_s"] > 0
