"""streams.shadow: sampling, the lane's bound, pairs and summaries that recount."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import numpy.typing as npt
import pytest

from camstream.errors import InferenceError
from camstream.records import ShadowRecord, render_schema
from streams.routing import Route, Router
from streams.shadow import ShadowFrame, ShadowLane, candidate_of, sampled

CHAMPION = Route("m", 1)
CANDIDATE = Route("m", 2)
LABELS = ["cat", "dog", "car"]


def _router(root: Path) -> Router:
    for version in (1, 2):
        folder = root / "m" / str(version)
        folder.mkdir(parents=True)
        (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return Router(root, "m")


def _frames(count: int, label: str = "dog") -> list[ShadowFrame]:
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    return [
        ShadowFrame("cam", seq, 1000 + seq, image, CHAMPION, label, 0.6, 4.0)
        for seq in range(count)
    ]


def test_sampling_is_stable_and_close_to_the_fraction() -> None:
    picks = [sampled("cam", seq, 0.25) for seq in range(4000)]
    assert picks == [sampled("cam", seq, 0.25) for seq in range(4000)]
    assert 0.22 < sum(picks) / len(picks) < 0.28
    assert not any(sampled("cam", s, 0.0) for s in range(100))
    assert all(sampled("cam", s, 1.0) for s in range(100))


def test_candidate_comes_from_the_cameras_features() -> None:
    assert candidate_of({"shadow_model": "m:2", "shadow_fraction": 0.5}) == (CANDIDATE, 0.5)
    assert candidate_of({"shadow_model": "", "shadow_fraction": 0.5}) is None
    assert candidate_of({"shadow_model": "m:2", "shadow_fraction": 0.0}) is None
    assert candidate_of({"shadow_model": "m:two", "shadow_fraction": 0.5}) is None
    assert candidate_of({}) is None


def test_pairs_and_summaries_recount_and_validate(tmp_path: Path) -> None:
    # Given a candidate that says 'dog' for even seqs and 'car' for odd ones
    async def classify(
        images: npt.NDArray[np.uint8], model: str, version: str
    ) -> npt.NDArray[np.float32]:
        assert (model, version) == ("m", "2")
        await asyncio.sleep(0.001)
        return np.array(
            [[0.1, 0.8, 0.1] if i % 2 == 0 else [0.1, 0.2, 0.7] for i in range(len(images))],
            dtype=np.float32,
        )

    lane = ShadowLane(classify, _router(tmp_path), "t.shadow", "w", window_pairs=4, inflight=1)

    # When ten champion 'dog' frames are offered, two at a time, each after the last
    async def scenario() -> list[bytes]:
        frames = _frames(10)
        for start in range(0, 10, 2):
            lane.offer(CANDIDATE, frames[start : start + 2])
            await lane.stop()
        return [record.value for record in lane.drain()]

    values = asyncio.run(scenario())

    # Then every record is schema-valid, ten pairs and two full windows of four
    validator = jsonschema.Draft202012Validator(json.loads(render_schema(ShadowRecord)))
    records = [json.loads(v) for v in values]
    for record in records:
        validator.validate(record)
    pairs = [r for r in records if r["kind"] == "pair"]
    summaries = [r for r in records if r["kind"] == "summary"]
    assert len(pairs) == 10 and [s["window"] for s in summaries] == [0, 1]
    # ...and each summary's figures recount from its window's pairs
    for summary in summaries:
        mine = [p for p in pairs if p["window"] == summary["window"]]
        assert summary["pairs"] == len(mine) == 4
        assert summary["agreement_rate"] == sum(p["agree"] for p in mine) / 4 == 0.5
        confusion = Counter((p["champion_label"], p["candidate_label"]) for p in mine)
        assert {
            (c["champion_label"], c["candidate_label"]): c["count"] for c in summary["confusion"]
        } == confusion
        shift = np.mean([p["candidate_score"] - p["champion_score"] for p in mine])
        assert summary["confidence_shift"] == pytest.approx(shift)
        assert summary["window_start_ms"] == min(p["capture_ts_ms"] for p in mine)


def test_a_full_lane_skips_and_a_failing_candidate_counts_failures(tmp_path: Path) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    async def classify(
        images: npt.NDArray[np.uint8], model: str, version: str
    ) -> npt.NDArray[np.float32]:
        calls.append(len(images))
        await release.wait()
        raise InferenceError("candidate down")

    lane = ShadowLane(classify, _router(tmp_path), "t.shadow", "w", window_pairs=5, inflight=1)

    async def scenario() -> list[dict[str, object]]:
        frames = _frames(5)
        lane.offer(CANDIDATE, frames[:2])  # runs
        await asyncio.sleep(0)
        lane.offer(CANDIDATE, frames[2:])  # the lane is full: skipped
        release.set()
        await lane.stop()
        return [json.loads(record.value) for record in lane.drain()]

    (summary,) = asyncio.run(scenario())
    assert calls == [2]
    assert summary["kind"] == "summary" and summary["pairs"] == 0
    assert (summary["failures"], summary["skipped"]) == (2, 3)
    assert summary["agreement_rate"] is None
