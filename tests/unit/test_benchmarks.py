"""The benchmarks' own bookkeeping: which baseline wins, and where the CPU went."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.cpu import CpuMeter, group_cpu_s
from benchmarks.pipeline import stage_quantiles, strongest_baseline


def _round(**fps: float) -> dict[str, object]:
    return {
        "cores": 2,
        "candidates": {name: {"fps": v, "what": f"{name} program"} for name, v in fps.items()},
    }


def test_strongest_baseline_is_the_candidate_with_the_fastest_median() -> None:
    # Given three rounds where one round flatters the serial loop
    rounds = [
        _round(serial=90.0, threads=130.0),
        _round(serial=200.0, threads=128.0),
        _round(serial=91.0, threads=135.0),
    ]
    # When the baseline is chosen
    strongest = strongest_baseline(rounds)
    # Then it is the fastest median, and every candidate is reported with its rounds
    assert strongest["best"] == "threads"
    assert strongest["candidates"]["threads"]["fps"] == 130.0
    assert strongest["candidates"]["serial"] == {
        "fps": 91.0,
        "fps_rounds": [90.0, 200.0, 91.0],
        "what": "serial program",
    }


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stage_quantiles_leave_the_rest_of_end_to_end_after_the_measured_stages() -> None:
    # decode and the Feast read run side by side: only the longer of the two counts
    latencies = [
        {
            "queue_ms": 10.0 * i,
            "decode_ms": 4.0,
            "enrich_ms": 6.0,
            "infer_ms": 20.0,
            "end_to_end_ms": 10.0 * i + 6.0 + 20.0 + 3.0,
        }
        for i in range(1, 101)
    ]
    stages = stage_quantiles(latencies)
    assert list(stages) == ["queue", "decode", "enrich", "infer", "rest"]
    assert stages["rest"] == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
    assert stages["queue"]["p50"] == 505.0 and stages["queue"]["p99"] == 990.1
    assert stages["infer"] == {"p50": 20.0, "p95": 20.0, "p99": 20.0}


def test_cpu_meter_reports_this_process_cpu_per_frame() -> None:
    # Given a meter over no other group
    meter = CpuMeter({})
    # When this process burns 0.2 s of CPU for 10 frames
    meter.start()
    _spin(0.2)
    figures = meter.stop(10)
    # Then about 20 ms a frame are the bench's, and the machine was busy meanwhile
    assert 15 <= figures["bench"] <= 40
    assert figures["busy_cores"] > 0.5


def test_group_cpu_counts_a_child_process_group() -> None:
    # Given a child in its own process group that burns CPU
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ntime.sleep(5)",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while group_cpu_s({child.pid})[child.pid] < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Then its group's CPU is counted, an unknown group's is zero
        assert group_cpu_s({child.pid})[child.pid] >= 0.25
        assert group_cpu_s({2**22 + 12345}) == {2**22 + 12345: 0.0}
    finally:
        child.kill()
        child.wait()
