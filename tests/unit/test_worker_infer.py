"""streams.infer.ResilientClassifier against a fake Triton: split, retry, breaker."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.utils import InferenceServerException

from camstream.errors import InferenceError
from streams.breaker import BreakerState, CircuitBreaker
from streams.infer import ResilientClassifier, RouteGone, TritonClassifier


class FakeTriton:
    """Fails the first ``failures`` calls, then returns one row per image (its index)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[int] = []

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]:
        self.calls.append(len(images))
        if self.failures > 0:
            self.failures -= 1
            raise InferenceError("connection refused")
        return images[:, 0, 0, :1].astype(np.float32)


def _images(n: int) -> npt.NDArray[np.uint8]:
    images = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def test_a_batch_is_split_over_concurrent_requests_and_joined_in_order() -> None:
    triton = FakeTriton()
    classifier = ResilientClassifier(triton, CircuitBreaker(3, 2.0), inflight=3, retry_max_s=5)
    probs = asyncio.run(classifier.classify(_images(8)))
    assert sorted(triton.calls) == [2, 3, 3]
    assert probs[:, 0].tolist() == list(range(8))


def test_failures_back_off_doubling_to_the_cap_then_the_breaker_opens_and_recovers() -> None:
    # Given a server that fails five attempts, a breaker opening after three failures
    clock = Clock()
    triton = FakeTriton(failures=5)
    breaker = CircuitBreaker(3, reset_s=2.0, clock=clock)
    classifier = ResilientClassifier(triton, breaker, 1, retry_max_s=0.3, sleep=clock.sleep)
    # When a batch is classified
    probs = asyncio.run(classifier.classify(_images(2)))
    # Then it is answered in the end, nothing dropped
    assert probs[:, 0].tolist() == [0, 1]
    assert len(triton.calls) == 6
    # with capped doubling back-off, and waits while the breaker was open
    backoffs = [s for s in clock.sleeps if s in (0.1, 0.2, 0.3)]
    assert backoffs[:3] == [0.1, 0.2, 0.3]
    assert any(s > 0.3 for s in clock.sleeps)  # the breaker's wait for its trial call
    assert breaker.state is BreakerState.CLOSED


def test_a_version_triton_no_longer_serves_is_given_up_not_retried_for_ever() -> None:
    # Given a server that refuses the version, and says (when asked) it does not serve it
    triton = FakeTriton(failures=10)
    clock = Clock()
    classifier = ResilientClassifier(triton, CircuitBreaker(3, 2.0), 1, 5, sleep=clock.sleep)
    answers: list[bool | None] = [None, False]

    async def served() -> bool | None:
        return answers.pop(0)

    # When a batch is sent to it
    try:
        asyncio.run(classifier.classify(_images(2), "m", "7", served))
    except RouteGone as exc:
        gone = str(exc)
    # Then an unanswerable check (None: Triton away) waits it out, and "not served" ends it
    assert "m:7 is not served" in gone
    assert len(triton.calls) == 2 and clock.sleeps == [0.1]
    assert classifier.breaker.state is BreakerState.CLOSED  # not a server failure


class FakeServer:
    """What TritonClassifier.is_ready asks of tritonclient: readiness, then the index."""

    def __init__(self, ready: bool, index: list[dict[str, str]] | Exception) -> None:
        self.ready = ready
        self.index = index

    async def is_model_ready(self, model: str, version: str, client_timeout: float) -> bool:
        return self.ready

    async def get_model_repository_index(
        self, as_json: bool, client_timeout: float
    ) -> dict[str, list[dict[str, str]]]:
        if isinstance(self.index, Exception):
            raise self.index
        return {"models": self.index}


@pytest.mark.parametrize(
    ("ready", "index", "answer"),
    [
        (True, [], True),
        # loaded, not ready this moment (a python stub restarting): wait, do not give up
        (False, [{"name": "m", "version": "7", "state": "READY"}], None),
        (False, [{"name": "m", "version": "7", "state": "LOADING"}], None),
        # unloaded, or never there (another version or model does not count)
        (
            False,
            [{"name": "m", "version": "7", "state": "UNAVAILABLE", "reason": "unloaded"}],
            False,
        ),
        (False, [{"name": "m", "version": "6", "state": "READY"}], False),
        (False, [{"name": "n", "version": "7", "state": "READY"}], False),
        # Triton cannot answer
        (False, InferenceServerException("deadline exceeded"), None),
    ],
)
def test_a_version_is_given_up_only_once_triton_says_it_is_not_loaded(
    ready: bool, index: list[dict[str, str]] | Exception, answer: bool | None
) -> None:
    async def ask() -> bool | None:
        client = TritonClassifier("127.0.0.1:1", "m", "7", timeout_s=1.0)
        await client.close()
        client._client = FakeServer(ready, index)  # type: ignore[assignment]
        return await client.is_ready("m", "7")

    assert asyncio.run(ask()) is answer
