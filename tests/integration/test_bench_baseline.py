"""The in-process baseline of `camstream bench pipeline`, in the model environment:
every candidate runs on real JPEG frames and the reported best is the fastest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import pytest

from camstream import modelrepo
from camstream.imaging import encode_jpeg
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import ensure_assets
from camstream.stack.triton import locate_model_env

pytestmark = pytest.mark.integration


def test_baseline_measures_every_candidate_and_reports_the_fastest(tmp_path: Path) -> None:
    # Given eight JPEG frames of a real video and the exported model
    settings = Settings()
    video = cv2.VideoCapture(str(ensure_assets(settings.cache_dir).vtest_video))
    for i in range(8):
        ok, image = video.read()
        assert ok
        (tmp_path / f"{i:04d}.jpg").write_bytes(encode_jpeg(image, 85))
    video.release()
    model = settings.model_version_dir() / modelrepo.ONNX_FILE
    # When the baseline runs one short round in the model environment
    result = subprocess.run(
        [
            str(locate_model_env().bin_dir / "python"),
            "-m",
            "benchmarks.baseline",
            "--model",
            str(model),
            "--frames",
            str(tmp_path),
            "--cores",
            "2",
            "--rounds",
            "1",
            "--count",
            "16",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # Then every candidate was measured, and the best is the fastest of them
    rates = {name: row["fps"] for name, row in figures["candidates"].items()}
    assert {"serial-b1", "threads-b1", "threads-b4", "threads-b8", "pool-b8"} <= set(rates)
    assert all(rate > 0 for rate in rates.values())
    assert figures["best"] == max(rates, key=rates.__getitem__)
    assert figures["fps"] == rates[figures["best"]]
