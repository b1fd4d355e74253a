"""The live view on the session stack, seen by a real browser (Debian's headless
Chromium, driven through chromedriver's WebDriver API: no browser download), its token,
and its load: real frames through the worker, read back by the view.

The view runs as `camstream view` (a child process, bound to 0.0.0.0 with a token, as
an operator would serve a wall display); cameras publish real photos that change every
few frames, so labels change."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.view import FramePublisher, run_load, sample_jpegs
from camstream.records import ModelRef, ShadowPair
from camstream.settings import REPO_ROOT
from camstream.stack.process import ManagedProcess, free_port, port_open
from camstream.view.launch import ViewProcess
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

TOKEN = "integration-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)
# The load run: sized for CI (the benchmark, `bench_view`, runs 60 s or more).
LOAD_CAMERAS, LOAD_CLIENTS, LOAD_S = 32, 20, 25.0
LATENCY_P99_MS = 1500.0  # prediction published -> tile on a client, 99th percentile
RSS_GROWTH_MIB = 25.0


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver HTTP API (urllib only)."""

    def __init__(self, log_dir: Path) -> None:
        missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
        if missing:
            raise AssertionError(
                f"{', '.join(missing)} missing: run scripts/system-packages.sh as root "
                "(apt-get install -y chromium chromium-driver)"
            )
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.driver = ManagedProcess(
            "chromedriver", [str(CHROMEDRIVER), f"--port={port}"], log_dir / "chromedriver.log"
        ).start()
        self.driver.wait_ready(lambda: self._call("GET", "/status")["ready"], timeout_s=30)
        options = {
            "binary": str(CHROMIUM),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--user-data-dir={log_dir / 'chromium-profile'}",
            ],
        }
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from exc

    def open(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def run(self, script: str) -> Any:
        return self._call("POST", f"{self.session}/execute/sync", {"script": script, "args": []})

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self._call("GET", f"{self.session}/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.driver.stop()


TILES_JS = """
return [...document.querySelectorAll('#wall .tile')].map((t) => {
  const img = t.querySelector('.thumb-img');
  return {
    camera: t.dataset.camera, status: t.dataset.status, label: t.dataset.label,
    thumb: img.complete && img.naturalWidth > 0 && t.classList.contains('has-thumb'),
    dlq: t.querySelector('.dlq').textContent, model: t.querySelector('.model').textContent,
    shadow: t.querySelector('.shadow').hidden ? null : t.querySelector('.shadow').textContent,
    disagree: t.classList.contains('disagree'),
  };
});
"""


def publish_shadow_pair(stack: Stack, camera: str, champion_label: str) -> None:
    """A shadow pair record where a candidate disagrees (the session stack serves one
    model version, and the worker shadows only with another), validated as the worker's
    are, on the shadow topic (which the local stack does not create: created here)."""
    assert stack.local is not None and stack.local.kafka is not None
    stack.local.kafka.create_topics(
        [stack.settings.shadow_topic], partitions=stack.settings.topic_partitions
    )
    now_ms = int(time.time() * 1000)
    pair = ShadowPair(
        camera_id=camera,
        seq=1_000_000,
        capture_ts_ms=now_ms,
        window=0,
        champion=ModelRef(name="efficientnet_lite0", version="1"),
        candidate=ModelRef(name="fashion", version="2"),
        champion_label=champion_label,
        champion_score=0.8,
        candidate_label="Sneaker",
        candidate_score=0.6,
        agree=False,
        champion_infer_ms=12.0,
        candidate_infer_ms=9.0,
        worker="test",
        published_ts_ms=now_ms,
    )
    kafka = stack.producer()
    kafka.produce(stack.settings.shadow_topic, key=camera.encode(), value=pair.to_json_bytes())
    kafka.flush(10)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()


@pytest.fixture(scope="module")
def view(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewProcess]:
    """`camstream view` on 0.0.0.0 with a token (and its metrics port, for the load run)."""
    assert stack.local is not None
    logs = tmp_path_factory.mktemp("view")
    settings = stack.local.child_settings(metrics_port=free_port())
    process = ViewProcess(settings, logs, host="0.0.0.0", token=TOKEN)
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"the view did not stop cleanly on SIGTERM (exit {code})"


def test_view_refuses_a_non_local_bind_without_a_token(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAMSTREAM_VIEW_TOKEN"}
    env["CAMSTREAM_KAFKA_BOOTSTRAP"] = stack.info.kafka_bootstrap
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "camstream", "view", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CAMSTREAM_VIEW_TOKEN" in result.stderr
    assert "bind 127.0.0.1" in result.stderr
    assert not port_open(port)  # nothing was started


def test_requests_without_the_token_get_401_and_no_frame(view: ViewProcess) -> None:
    for path in ("", "camera?id=x", "api/cameras", "api/thumbnail?id=x", "api/events", "healthz"):
        status, _type, body = get(view.url + path)
        assert status == 401, path
        assert b"CAMSTREAM_VIEW_TOKEN" in body
    status, kind, body = get(view.url + "api/cameras", {"Authorization": f"Bearer {TOKEN}"})
    assert (status, kind) == (200, "application/json")
    assert "tiles" in json.loads(body)


def test_browser_sees_every_camera_live_and_a_stopped_one_turn_stale(
    stack: Stack, view: ViewProcess, tmp_path: Path
) -> None:
    # Given three cameras publishing real photos (a new one every 3 frames) at 2 fps,
    # and a bad frame of one of them
    cameras = ["view-lobby", "view-dock", "view-gate"]
    publisher = FramePublisher(
        stack.info.kafka_bootstrap,
        stack.settings.frames_topic,
        cameras,
        sample_jpegs(stack.settings.cache_dir),
        fps=2.0,
    )
    kafka = stack.producer()
    stack.publish(kafka, "view-dock", 0, b"this is not a jpeg", 640, 480)
    kafka.flush(10)
    publisher.start()
    browser = Browser(tmp_path)
    try:
        # When a browser opens the view with the token (it keeps a session cookie)
        browser.open(f"{view.url}?token={TOKEN}")
        assert "token" not in browser.run("return location.href")
        labels: dict[str, set[str]] = {c: set() for c in cameras}
        deadline = time.monotonic() + 90
        tiles: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            tiles = {t["camera"]: t for t in browser.run(TILES_JS) if t["camera"] in cameras}
            for camera, tile in tiles.items():
                if tile["status"] == "live":
                    labels[camera].add(tile["label"])
            done = len(tiles) == len(cameras) and all(
                t["thumb"] and t["status"] == "live" for t in tiles.values()
            )
            if done and all(len(v) >= 2 for v in labels.values()):
                break
            time.sleep(0.5)
        # Then each camera has its tile, live, with a thumbnail and a label that changes
        assert set(tiles) == set(cameras), tiles
        counted = stack.local.worker_metrics() if stack.local else ""
        predicted = [line for line in counted.splitlines() if "predictions_total{" in line]
        assert all(t["status"] == "live" for t in tiles.values()), (tiles, predicted)
        for camera, tile in tiles.items():
            assert tile["status"] == "live" and tile["thumb"], tile
            assert len(labels[camera]) >= 2, (camera, labels[camera])
            assert tile["model"].startswith("efficientnet_lite0:1"), tile
        assert tiles["view-dock"]["dlq"] == "DLQ 1"

        # When a shadow candidate disagrees with the champion on one of them
        publish_shadow_pair(stack, "view-gate", tiles["view-gate"]["label"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            gate = {t["camera"]: t for t in browser.run(TILES_JS)}["view-gate"]
            if gate["shadow"]:
                break
            time.sleep(0.5)
        # Then its tile shows the candidate's label beside the champion's, marked
        assert gate["shadow"] and "disagrees" in gate["shadow"] and "fashion:2" in gate["shadow"]
        assert gate["disagree"]

        # When one camera stops publishing
        publisher.paused.add("view-dock")
        stopped = time.monotonic()
        statuses: dict[str, str] = {}
        while time.monotonic() - stopped < 20:
            statuses = {t["camera"]: t["status"] for t in browser.run(TILES_JS)}
            if statuses.get("view-dock") == "stale":
                break
            time.sleep(0.25)
        stale_after = time.monotonic() - stopped
        # Then it shows stale within seconds, and the others stay live
        assert statuses.get("view-dock") == "stale", statuses
        assert stale_after < 12, stale_after
        assert statuses["view-lobby"] == statuses["view-gate"] == "live"
        seen = browser.run("return window.camstreamView")
        time.sleep(1.0)  # the page's ages tick once more
        shot = browser.screenshot(tmp_path / "view.png")
        # Kept as the run's artifact (docs/view.png, the README's picture, is one of them)
        artifacts = REPO_ROOT / ".camstream" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "view.png", artifacts / "view.png")
        assert seen["connected"] and seen["snapshots"] >= 1 and seen["events"] > 0

        # And the camera page draws its recent predictions and drift windows
        browser.open(f"{view.url}camera?id=view-lobby")
        deadline = time.monotonic() + 30
        drawn: dict[str, int] = {}
        while time.monotonic() < deadline:
            drawn = browser.run(
                "return {points: document.querySelectorAll('#chart-score circle').length,"
                " latency: document.querySelectorAll('#chart-latency polyline').length,"
                " windows: document.querySelectorAll('#windows tbody tr').length}"
            )
            if drawn["points"] > 5 and drawn["latency"] and drawn["windows"]:
                break
            time.sleep(0.5)
        assert drawn["points"] > 5 and drawn["latency"] and drawn["windows"], drawn
        camera_shot = browser.screenshot(tmp_path / "camera.png")
    finally:
        browser.close()
        publisher.stop()
    # The screenshots are real pages of the window's size
    for png in (shot, camera_shot):
        width, height = png_size(png)  # the viewport: the window less its (headless) frame
        assert width == WINDOW[0] and WINDOW[1] * 0.7 < height <= WINDOW[1]
        assert 20_000 < len(png) < 10_000_000
    latencies = sorted(seen["latenciesMs"])
    print(
        f"view: stale {stale_after:.1f}s after the camera stopped; browser saw "
        f"{len(latencies)} updates, prediction->page median "
        f"{latencies[len(latencies) // 2]:.0f} ms, max {latencies[-1]:.0f} ms; "
        f"screenshot {len(shot)} bytes ({tmp_path / 'view.png'})"
    )


def test_load_32_cameras_20_clients_latency_bounded_memory_flat(
    stack: Stack, view: ViewProcess
) -> None:
    # Given 32 cameras at 1 fps through the real worker
    cameras = [f"load-{i:02d}" for i in range(LOAD_CAMERAS)]
    publisher = FramePublisher(
        stack.info.kafka_bootstrap,
        stack.settings.frames_topic,
        cameras,
        sample_jpegs(stack.settings.cache_dir),
        fps=1.0,
    )
    publisher.start()
    try:
        time.sleep(5)
        # When 20 clients read the view's event stream for 25 s
        metrics_url = f"http://127.0.0.1:{view.settings.metrics_port}/metrics"
        figures = run_load(
            view.url,
            clients=LOAD_CLIENTS,
            duration_s=LOAD_S,
            view_pid=view.pid,
            token=TOKEN,
            metrics_url=metrics_url,
        )
    finally:
        publisher.stop()
    print("view load:", json.dumps(figures))
    # Then every client got every camera, late by less than the bound, memory flat
    assert figures["clients_ok"] == LOAD_CLIENTS, figures["errors"]
    assert figures["cameras_seen_min"] >= LOAD_CAMERAS
    assert figures["latency_samples"] > LOAD_CLIENTS * LOAD_CAMERAS * LOAD_S * 0.5
    assert figures["latency_ms"]["p99"] < LATENCY_P99_MS, figures["latency_ms"]
    assert figures["rss_mib"]["growth"] < RSS_GROWTH_MIB, figures["rss_mib"]
