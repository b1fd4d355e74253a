"""One real local stack per test session: Kafka, Triton, Feast and a Faust worker.

Tests publish their own frames (no sample producers) and read the output topics with
plain Kafka consumers, as a downstream service would. The helpers they use live in
tests/support (stack.py: the Stack handle, Feed, reading predictions back; faults.py).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from camstream.settings import Settings
from camstream.stack.local import LocalStack
from camstream.stack.process import tail
from camstream.stack.setup import prepare
from tests.support.stack import DRIFT_WINDOW, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    # The stack's settings reach its worker as they are (LocalStack.child_settings).
    settings = Settings(state_dir=state, feature_cache_ttl_s=0.5, drift_window_frames=DRIFT_WINDOW)
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
    worker = handle.local.worker if handle.local else None
    if worker is not None and not worker.running():
        pytest.fail(
            f"the session stack's worker exited (code {worker.stop()}); its log:\n"
            + tail(worker.log_path, 60)
        )
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
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
