"""One real stack per test session: Kafka, Triton, Feast and a Faust worker.

``CAMSTREAM_TEST_STACK`` chooses it: ``local`` (the default) starts the local stack's
processes; ``compose`` brings up docker-compose's cpu profile (tests/support/compose.py)
and runs the tests marked ``compose``, the ones that reach the stack only as a camera,
an operator and a downstream service would (the others look at the local processes:
their pids, logs, metrics ports; they are deselected there, and the count is said).

Tests publish their own frames and read the output topics with plain Kafka consumers,
as a downstream service would. The helpers they use live in tests/support (stack.py:
the Stack handle, Feed, reading predictions back; faults.py; compose.py).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from camstream.stack.local import LocalStack
from camstream.stack.process import tail
from camstream.stack.setup import prepare
from tests.support.compose import compose_stack
from tests.support.stack import Stack, compose_handle, session_settings, stack_kind


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the compose stack, only the tests marked ``compose`` (said, not skipped)."""
    if stack_kind() != "compose":
        return
    local_only = [item for item in items if item.get_closest_marker("compose") is None]
    if local_only:
        config.hook.pytest_deselected(items=local_only)
        items[:] = [item for item in items if item.get_closest_marker("compose") is not None]
        config.pluginmanager.get_plugin("terminalreporter").write_line(  # type: ignore[union-attr]
            f"CAMSTREAM_TEST_STACK=compose: {len(local_only)} tests need the local stack's "
            f"processes and are deselected; {len(items)} run against docker-compose"
        )


@pytest.fixture(scope="session")
def compose_session() -> Iterator[Stack]:
    """docker-compose's cpu profile, up for the whole session (CAMSTREAM_TEST_STACK=compose)."""
    with compose_stack() as running:
        print(f"\ncompose cpu profile healthy after {running.startup_s}s")
        yield compose_handle(running)


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if stack_kind() == "compose":
        yield request.getfixturevalue("compose_session")
        return
    state = tmp_path_factory.mktemp("stack")
    # The stack's settings reach its worker as they are (LocalStack.child_settings).
    settings = session_settings(state_dir=state)
    prepared = prepare(settings)
    local = LocalStack(settings)
    try:
        info = local.start()
        yield Stack(info, settings, prepared.assets, local)
    finally:
        local.stop()


@pytest.fixture(autouse=True)
def _session_worker_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the session stack starts only while its worker runs (a dead one would
    fail every later test after minutes of waiting, with nothing said); a failing test
    shows the tail of every log of the stack."""
    if "stack" not in request.fixturenames:
        yield
        return
    handle: Stack = request.getfixturevalue("stack")
    running = handle.compose
    if running is not None and not any(
        w.get("State") == "running" for w in running.containers("worker")
    ):
        pytest.fail(
            f"the compose stack's worker is not running; its log:\n{running.logs('worker')}"
        )
    worker = handle.local.worker if handle.local else None
    if worker is not None and not worker.running():
        pytest.fail(
            f"the session stack's worker exited (code {worker.stop()}); its log:\n"
            + tail(worker.log_path, 60)
        )
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    if running is not None:
        for service in ("worker", "triton-cpu", "kafka", "feast-apply"):
            request.node.add_report_section("call", f"log {service}", running.logs(service))
    for name, path in sorted(handle.info.logs.items()):
        request.node.add_report_section("call", f"log {name}", tail(Path(path), 40))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, for fixtures that look at the outcome."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
