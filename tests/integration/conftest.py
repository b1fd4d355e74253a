"""One real local stack per test session: Kafka, Triton, Feast and a Faust worker.

Tests publish their own frames (no sample producers) and read the output topics with
plain Kafka consumers, as a downstream service would. The helpers they use live in
tests/support (stack.py: the Stack handle, Feed, reading predictions back; faults.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from camstream.settings import Settings
from camstream.stack.local import LocalStack
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
        yield Stack(info, settings, prepared.assets)
    finally:
        local.stop()
