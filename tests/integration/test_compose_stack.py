"""docker-compose's cpu profile, run for real (tests/support/compose.py): images built
here from Debian, the stack up healthy through testcontainers' DockerCompose, the host
publishing frames to its Kafka on 127.0.0.1 as a camera would, and reading the output
topics as a downstream service would. What only compose has: its own sample camera,
the worker SIGKILLed with `docker kill` and started again, and two workers with
`--scale worker=2`. Afterwards no container, network or volume of the project is left.

The tests marked ``compose`` elsewhere (every frame of the real videos once, real photos
labelled right, the DLQ, the Feast threshold, drift) run against this same stack with
CAMSTREAM_TEST_STACK=compose (`make test` runs them so after the local stack's suite).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.compose import ComposeStack, compose_stack
from tests.support.stack import (
    Feed,
    Stack,
    compose_handle,
    predictions_of,
    schema_validator,
    stack_kind,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.compose,
    pytest.mark.compose_only,
    pytest.mark.timeout(1800),
]


@pytest.fixture(scope="module")
def compose(request: pytest.FixtureRequest) -> Iterator[tuple[ComposeStack, Stack]]:
    """The session's compose stack (CAMSTREAM_TEST_STACK=compose), or one of this
    module's own, torn down after it (on the local stack's run)."""
    if stack_kind() == "compose":
        session: Stack = request.getfixturevalue("compose_session")
        assert session.compose is not None
        yield session.compose, session
        return
    with compose_stack() as running:
        print(f"\ncompose cpu profile healthy after {running.startup_s}s")
        yield running, compose_handle(running)


def test_the_stacks_own_sample_camera_is_predicted(compose: tuple[ComposeStack, Stack]) -> None:
    _, stack = compose
    # Given the compose stack with its producer on docker/cameras.yaml's sample camera,
    # when a downstream service reads the predictions topic, then that camera's are there
    sample = stack.collect(
        stack.settings.predictions_topic, lambda m: len(m) >= 5, camera_ids={"cam-street"}
    )
    records = [json.loads(m.value()) for m in sample]
    assert len(records) >= 5
    validator = schema_validator("prediction.schema.json")
    for record in records:
        validator.validate(record)
    assert {r["enrichment"] for r in records} == {"ok"}  # registered by feast-apply


def test_the_worker_killed_with_docker_kill_and_started_again_loses_no_frame(
    compose: tuple[ComposeStack, Stack],
) -> None:
    running, stack = compose
    (before,) = running.containers("worker")
    started = _inspect(running, before["ID"])["StartedAt"]
    feed = Feed(stack, ["compose-kill-a", "compose-kill-b"], fps=8)
    # Given frames flowing, when the worker's container gets SIGKILL mid-stream
    with feed:
        time.sleep(5)
        running.docker("kill", "--signal", "KILL", before["ID"])
        time.sleep(2)
        # and is started again (as an orchestrator would)
        running.run("start", "worker")
        running.wait_healthy("worker", 1)
        time.sleep(4)

    # Then every acknowledged frame has a prediction (at least once: none lost)
    predictions = predictions_of(stack, set(feed.cameras), feed.delivered)
    assert {(p["camera_id"], p["seq"]) for p in predictions} >= feed.delivered
    assert len(feed.delivered) > 2 * 8 * 10
    # from the same container, killed and started again
    (after,) = running.containers("worker")
    state = _inspect(running, after["ID"])
    assert after["ID"] == before["ID"] and state["Running"]
    # (it exited after its first start, the kill, and was started after that)
    assert started < state["FinishedAt"] < state["StartedAt"], state


def _inspect(running: ComposeStack, container: str) -> dict[str, Any]:
    """A container's State, as `docker inspect` gives it."""
    state: dict[str, Any] = json.loads(running.docker("inspect", container))[0]["State"]
    return state


def test_two_workers_with_scale_share_the_cameras_and_predict_every_frame(
    compose: tuple[ComposeStack, Stack],
) -> None:
    running, stack = compose
    # Given the stack scaled to two workers
    scale = ("up", "-d", "--no-recreate", "--wait", "--scale")
    running.run(*scale, "worker=2", "worker", timeout_s=300)
    try:
        running.wait_healthy("worker", 2)
        cameras = [f"compose-scale-{i}" for i in range(6)]
        feed = Feed(stack, cameras, fps=4)
        # When six cameras send frames
        with feed:
            time.sleep(12)
    finally:  # later tests on the session's stack get one worker again
        running.run(*scale, "worker=1", "worker", timeout_s=300)

    # Then every frame is predicted, and both workers did part of the work
    predictions = predictions_of(stack, set(cameras), feed.delivered)
    assert {(p["camera_id"], p["seq"]) for p in predictions} >= feed.delivered
    late = [p for p in predictions if p["seq"] > 20]  # after the group settled
    workers = {p["worker"] for p in late}
    assert len(workers) == 2, workers
    # and each camera stayed with one worker once settled (its partition's owner)
    by_camera = {c: {p["worker"] for p in late if p["camera_id"] == c} for c in cameras}
    assert all(len(w) == 1 for w in by_camera.values()), by_camera
