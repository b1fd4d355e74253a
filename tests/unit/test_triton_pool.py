"""streams.infer.TritonPool against fake servers: selection, ejection, re-admission."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from camstream.errors import ConfigError, InferenceError
from camstream.records import ModelRef
from camstream.settings import load_settings
from streams.breaker import CircuitBreaker
from streams.infer import RequestRefused, ResilientClassifier, TritonPool

pytestmark = pytest.mark.timeout(20)


class FakeServer:
    """Answers after ``gate`` opens (when given); ``down`` fails requests and probes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model_ref = ModelRef(name="m", version="latest")
        self.down = False
        self.refuses = False
        self.ready = True
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.probes = 0

    async def connect(self, wait_s: float = 60.0) -> ModelRef:
        if self.down:
            raise InferenceError(f"{self.name} refused")
        self.model_ref = ModelRef(name="m", version="3")
        return self.model_ref

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise InferenceError(f"{self.name} refused")
        if self.refuses:
            raise RequestRefused(f"{self.name}: no such version")
        return np.full((len(images), 1), float(self.name[-1]), dtype=np.float32)

    async def is_ready(self, model: str, version: str) -> bool | None:
        return None if self.down else self.ready

    async def probe(self) -> bool:
        self.probes += 1
        return not self.down

    async def close(self) -> None:
        pass


def _images(n: int = 1) -> npt.NDArray[np.uint8]:
    return np.zeros((n, 2, 2, 3), dtype=np.uint8)


async def _connected(*servers: FakeServer, probe_s: float = 0.01) -> TritonPool:
    pool = TritonPool([(s.name, s) for s in servers], probe_initial_s=probe_s, probe_max_s=0.04)
    await pool.connect(wait_s=1)
    await asyncio.sleep(0)  # the other servers' joins finish
    return pool


def test_idle_servers_take_requests_in_turn() -> None:
    async def scenario() -> list[int]:
        a, b, c = FakeServer("s1"), FakeServer("s2"), FakeServer("s3")
        pool = await _connected(a, b, c)
        for _ in range(9):
            await pool.classify(_images())
        await pool.close()
        return [a.calls, b.calls, c.calls]

    assert asyncio.run(scenario()) == [3, 3, 3]


def test_a_request_goes_to_the_server_with_fewest_outstanding() -> None:
    async def scenario() -> tuple[int, int]:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b)
        a.gate = asyncio.Event()  # s1 holds every request it gets
        # Two at once: one to each server (in turn); s1 keeps its one outstanding.
        slow = [asyncio.ensure_future(pool.classify(_images())) for _ in range(2)]
        await asyncio.sleep(0)
        b_before = b.calls
        for _ in range(5):  # s1 has one outstanding: every one goes to s2
            await pool.classify(_images())
        a.gate.set()
        await asyncio.gather(*slow)
        await pool.close()
        return a.calls, b.calls - b_before

    assert asyncio.run(scenario()) == (1, 5)


def test_a_failed_request_is_retried_on_another_server_and_the_failed_one_ejected() -> None:
    async def scenario() -> tuple[float, list[str], int]:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b, probe_s=10)
        a.down = True
        values = [float((await pool.classify(_images()))[0, 0]) for _ in range(4)]
        healthy = pool.healthy
        await pool.close()
        return max(values), healthy, a.calls

    highest, healthy, a_calls = asyncio.run(scenario())
    assert highest == 2.0  # every answer came from s2
    assert healthy == ["s2"]
    assert a_calls == 1  # s1 got one request, then none while ejected


def test_an_ejected_server_comes_back_once_its_probe_passes() -> None:
    async def scenario() -> tuple[list[str], list[str], int, int]:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b)
        a.down = True
        for _ in range(2):
            await pool.classify(_images())
        await asyncio.sleep(0.1)  # probes fail, backing off
        during = pool.healthy
        a.down = False
        await asyncio.sleep(0.1)
        after = pool.healthy
        calls = a.calls
        for _ in range(4):
            await pool.classify(_images())
        await pool.close()
        return during, after, a.probes, a.calls - calls

    during, after, probes, a_calls = asyncio.run(scenario())
    assert during == ["s2"]
    assert after == ["s1", "s2"]
    assert 2 <= probes <= 8  # 0.01, 0.02, 0.04, 0.04 ...: capped backoff, not a spin
    assert a_calls == 2  # back in turn


def test_a_refused_request_tries_the_others_and_ejects_no_server() -> None:
    async def scenario() -> tuple[str, list[str], float]:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b)
        a.refuses = b.refuses = True
        with pytest.raises(RequestRefused) as refused:
            await pool.classify(_images())
        healthy = pool.healthy  # a version that no server has is no outage
        b.refuses = False
        served = await pool.classify(_images())
        await pool.close()
        return str(refused.value), healthy, float(served[0, 0])

    message, healthy, answer = asyncio.run(scenario())
    assert "no such version" in message
    assert healthy == ["s1", "s2"]
    assert answer == 2.0  # s1 still refuses; s2 serves it


def test_only_when_every_server_fails_does_the_pool_raise_and_a_request_takes_one_back() -> None:
    async def scenario() -> None:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b, probe_s=10)
        a.down = b.down = True
        try:
            with pytest.raises(InferenceError, match="refused"):
                await pool.classify(_images())
            assert (a.calls, b.calls) == (1, 1)
            assert pool.healthy == []
            # with none healthy, each request tries the ejected servers itself (the
            # probes wait 10 s here), so the pool comes back as soon as one does
            with pytest.raises(InferenceError, match="refused"):
                await pool.classify(_images())
            assert (a.calls, b.calls) == (2, 2)
            a.down = False
            assert float((await pool.classify(_images()))[0, 0]) == 1.0
            assert pool.healthy == ["s1"]
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_resilient_classifier_waits_out_an_outage_of_every_server() -> None:
    async def scenario() -> float:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b)
        a.down = b.down = True
        resilient = ResilientClassifier(pool, CircuitBreaker(3, 0.05), 1, retry_max_s=0.05)
        task = asyncio.ensure_future(resilient.classify(_images(2)))
        await asyncio.sleep(0.2)
        assert not task.done()
        b.down = False
        probs = await asyncio.wait_for(task, 2)
        await pool.close()
        return float(probs[0, 0])

    assert asyncio.run(scenario()) == 2.0


def test_connect_returns_once_one_server_is_ready_and_probes_the_others() -> None:
    async def scenario() -> tuple[ModelRef, list[str], list[str]]:
        a, b = FakeServer("s1"), FakeServer("s2")
        a.down = True
        pool = TritonPool([("s1", a), ("s2", b)], probe_initial_s=0.01, probe_max_s=0.02)
        ref = await pool.connect(wait_s=1)
        await asyncio.sleep(0)
        first = pool.healthy
        a.down = False
        await asyncio.sleep(0.1)
        second = pool.healthy
        await pool.close()
        return ref, first, second

    ref, first, second = asyncio.run(scenario())
    assert ref.version == "3"
    assert first == ["s2"]
    assert second == ["s1", "s2"]


def test_connect_fails_naming_the_setting_when_no_server_is_ready() -> None:
    async def scenario() -> None:
        a = FakeServer("s1")
        a.down = True
        pool = TritonPool([("s1", a)], probe_initial_s=10)
        try:
            with pytest.raises(InferenceError, match="CAMSTREAM_TRITON_GRPC"):
                await pool.connect(wait_s=1)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_is_ready_answers_for_healthy_servers_and_waits_on_ejected_ones() -> None:
    async def scenario() -> list[bool | None]:
        a, b = FakeServer("s1"), FakeServer("s2")
        pool = await _connected(a, b, probe_s=10)
        answers = [await pool.is_ready("m", "3")]
        a.ready = b.ready = False
        answers.append(await pool.is_ready("m", "3"))
        a.ready = b.ready = True
        a.down = True
        await pool.classify(_images())  # s1 ejected
        answers.append(await pool.is_ready("m", "3"))  # s2 serves it
        b.ready = False
        answers.append(await pool.is_ready("m", "3"))  # the healthy s2 does not
        b.down = True
        answers.append(await pool.is_ready("m", "3"))  # no healthy server can say
        await pool.close()
        return answers

    assert asyncio.run(scenario()) == [True, False, True, False, None]


def test_triton_grpc_takes_one_address_or_a_list() -> None:
    assert load_settings(triton_grpc="t:8001").triton_grpc_addresses == ["t:8001"]
    many = load_settings(triton_grpc="10.0.0.5:8001, 10.0.0.6:8001")
    assert many.triton_grpc_addresses == ["10.0.0.5:8001", "10.0.0.6:8001"]
    with pytest.raises(ConfigError, match=r"CAMSTREAM_TRITON_GRPC.*comma-separated"):
        load_settings(triton_grpc="10.0.0.5:8001,10.0.0.6")
