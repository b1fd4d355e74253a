"""Two real Triton servers behind one worker (`CAMSTREAM_TRITON_GRPC` as a list, what
`camstream up --triton 2` runs): one is killed mid-stream and started again on the
same ports. Every frame is predicted, the killed server's requests move to the
survivor without the worker backing off, and come back once it is ready; the worker
counts its requests per server and Triton's own statistics agree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from camstream.imaging import encode_jpeg, jpeg_to_model_input
from camstream.rollout import Triton
from camstream.stack.local import LocalStack, read_state
from camstream.stack.prometheus import stack_targets
from camstream.stack.triton import TritonServer
from tests.support.stack import Feed, Stack, metric_sum, own_stack, predictions_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REQUESTS = "camstream_worker_triton_requests_total"
HEALTHY = "camstream_worker_triton_server_healthy"


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, LocalStack]]:
    state = tmp_path_factory.mktemp("pool")
    with own_stack(
        state,
        tritons=2,
        worker_env={
            "CAMSTREAM_INFER_TIMEOUT_S": "2",
            "CAMSTREAM_TRITON_RETRY_MAX_S": "1",
            "CAMSTREAM_BREAKER_RESET_S": "1",
        },
    ) as stack:
        yield stack


@dataclass
class Sample:
    """The worker's per-server request counts and health at one moment."""

    at: float
    requests: dict[str, float]
    healthy: dict[str, float]


@dataclass
class Samples:
    addresses: list[str]
    taken: list[Sample] = field(default_factory=list)

    def take(self, local: LocalStack) -> Sample:
        by_server: dict[str, dict[str, float]] = {REQUESTS: {}, HEALTHY: {}}
        for family in text_string_to_metric_families(local.worker_metrics()):
            for row in family.samples:
                if row.name in by_server:
                    by_server[row.name][row.labels["server"]] = row.value
        sample = Sample(
            time.monotonic(),
            {a: by_server[REQUESTS].get(a, 0.0) for a in self.addresses},
            {a: by_server[HEALTHY].get(a, 0.0) for a in self.addresses},
        )
        self.taken.append(sample)
        return sample

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.taken if start <= s.at <= end]


def _sent(samples: list[Sample], address: str) -> float:
    """Requests the worker sent ``address`` over ``samples`` (first to last)."""
    return samples[-1].requests[address] - samples[0].requests[address]


def _triton_successes(server: TritonServer) -> float:
    """Triton's own count of successful inferences since the server started."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return metric_sum(response.read().decode(), "nv_inference_request_success")


def _sample_for(local: LocalStack, samples: Samples, seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        samples.take(local)
        time.sleep(0.5)
    return start, time.monotonic()


def test_one_of_two_tritons_killed_and_restarted_loses_no_frame_and_requests_follow(
    pool_stack: tuple[Stack, LocalStack],
) -> None:
    stack, local = pool_stack
    # Given a stack of two Triton servers, whose addresses stack.json lists for workers
    survivor, victim = local.tritons
    addresses = [survivor.grpc_address, victim.grpc_address]
    info = read_state(local.state_dir)
    assert info is not None and info.triton_grpc == ",".join(addresses)
    assert [t.address for t in stack_targets(info) if t.job == "triton"] == [
        f"127.0.0.1:{survivor.metrics_port}",
        f"127.0.0.1:{victim.metrics_port}",
    ]
    worker_pid = local.workers[0].pid
    samples = Samples(addresses)
    cameras = ["pool-a", "pool-b"]
    feed = Feed(stack, cameras, fps=8)

    with feed:
        # When frames flow through both servers
        both = _sample_for(local, samples, 6)
        # and one of them is killed (SIGKILL, no goodbye) for 10 s
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            victim.stop()  # reaps it and removes the shared memory it left
        alone = _sample_for(local, samples, 10)
        # and started again on the same ports
        victim.start()
        restarted_successes = _triton_successes(victim)
        back = _sample_for(local, samples, 10)

    # Then every acknowledged frame has a prediction, from the same worker process
    predictions = predictions_of(stack, set(cameras), feed.delivered)
    assert {(p["camera_id"], p["seq"]) for p in predictions} >= feed.delivered
    assert len(feed.delivered) > 2 * 8 * 20
    assert local.workers[0].pid == worker_pid and local.workers[0].running()

    # and while both ran, both were sent requests
    before = samples.between(*both)
    assert all(_sent(before, a) > 5 for a in addresses), before[-1]
    assert all(s.healthy == dict.fromkeys(addresses, 1.0) for s in before[1:]), before[-1]
    # and once the victim was gone, the worker ejected it and sent only the survivor:
    # at most the requests in flight when it died (and none later) went to it
    during = samples.between(*alone)
    ejected = [s for s in during if s.healthy[victim.grpc_address] == 0.0]
    assert ejected and ejected[0].at - killed_at < 3.0, during[:6]
    assert _sent(ejected, victim.grpc_address) == 0, ejected[-1]
    assert _sent(ejected, survivor.grpc_address) > 20, ejected[-1]
    # and none of it reached the worker's backoff: each failed request went at once to
    # the survivor, so the breaker never opened and no frame waited on a retry
    metrics = local.worker_metrics()
    assert metric_sum(metrics, 'camstream_worker_triton_failures_total{reason="error"}') == 0
    assert metric_sum(metrics, "camstream_worker_breaker_state") == 0
    # and once it was back, the worker took it back: healthy, and sent requests again,
    # which Triton's own statistics of the restarted server count as served
    after = [s for s in samples.between(*back) if s.healthy[victim.grpc_address] == 1.0]
    assert after and after[0].at - back[0] < 5.0, samples.between(*back)[:10]
    assert _sent(after, victim.grpc_address) > 5, after[-1]
    assert _triton_successes(victim) > restarted_successes
    print(
        f"\nrequests sent per server: both up {[_sent(before, a) for a in addresses]}, "
        f"one killed {[_sent(ejected, a) for a in addresses]}, "
        f"after restart {[_sent(after, a) for a in addresses]}; ejected "
        f"{ejected[0].at - killed_at:.1f}s after the kill, back "
        f"{after[0].at - back[0]:.1f}s after the restart"
    )


def test_a_rollout_sees_both_servers_as_one(pool_stack: tuple[Stack, LocalStack]) -> None:
    stack, local = pool_stack
    settings = stack.settings
    model = settings.model_name
    # Given the rollout's view of the stack's two servers (what `camstream promote` uses)
    fleet = Triton(stack.info.triton_grpc)
    single = [Triton(t.grpc_address) for t in local.tritons]
    try:
        assert fleet.live()
        # Then a version is ready where both serve it, and its statistics add up
        assert fleet.ready_versions(model) == single[0].ready_versions(model) == [1]
        stats = [s.stats(model, 1) for s in single]
        summed = fleet.stats(model, 1)
        assert summed is not None and all(stats)
        assert summed.success >= sum(s.success for s in stats if s) > 0
        # and a canary batch of real frames is answered half by each, as either alone
        frames = _real_frames(stack, 6)
        before = [s.stats(model, 1) for s in single]
        probs = fleet.classify(model, 1, frames)
        after = [s.stats(model, 1) for s in single]
        alone = single[0].classify(model, 1, frames)
        assert probs.shape == alone.shape
        assert (probs.argmax(axis=1) == alone.argmax(axis=1)).all()
        assert abs(probs - alone).max() < 1e-4
        # and each server's statistics count the request of its share
        for now, then in zip(after, before, strict=True):
            assert now is not None and then is not None and now.success > then.success
        # and with one server down, the rollout acts on the one that answers
        local.tritons[1].stop()
        assert fleet.live() and fleet.ready_versions(model) == [1]
        assert fleet.classify(model, 1, frames).shape == alone.shape
    finally:
        if not local.tritons[1].running():
            local.tritons[1].start()
        fleet.close()
        for s in single:
            s.close()


def _real_frames(stack: Stack, count: int) -> npt.NDArray[np.uint8]:
    """``count`` frames of the sample street video, as the model takes them."""
    frames: list[npt.NDArray[np.uint8]] = []
    capture = cv2.VideoCapture(str(stack.assets.vtest_video))
    try:
        while len(frames) < count:
            ok, bgr = capture.read()
            assert ok, "the sample video ended"
            jpeg = encode_jpeg(np.asarray(bgr, dtype=np.uint8), 90)
            frames.append(jpeg_to_model_input(jpeg, bgr.shape[1], bgr.shape[0]))
    finally:
        capture.release()
    return np.stack(frames)
