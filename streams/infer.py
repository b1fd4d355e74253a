"""Classification through Triton over async gRPC.

One request carries a micro-batch (uint8 NHWC; the model normalises on the server, so
the wire carries 150 KB per image instead of 600 KB). Every call has a deadline.
``TritonClassifier`` makes one attempt; ``ResilientClassifier`` splits a batch over
concurrent requests and waits out an outage: failed attempts back off exponentially
(capped) behind a circuit breaker, so consumption pauses and Kafka keeps the backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential_jitter
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    InferInput,
    InferRequestedOutput,
    KeepAliveOptions,
)
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from camstream import modelrepo
from camstream.errors import InferenceError
from camstream.records import ModelRef
from streams.breaker import BreakerState, CircuitBreaker, CircuitOpen

log = structlog.get_logger(__name__)

TRITON_FAILURES = Counter(
    "camstream_worker_triton_failures_total",
    "Failed or refused Triton batch attempts",
    ["reason"],
)
INFLIGHT_REQUESTS = Gauge("camstream_worker_inflight_requests", "Triton requests in flight")
BREAKER = Gauge("camstream_worker_breaker_state", "Triton breaker: 0 closed, 1 half-open, 2 open")


def channel_args(reconnect_max_s: float) -> list[tuple[str, int]]:
    """tritonclient's default channel options, with gRPC's reconnect backoff capped at
    ``reconnect_max_s`` (gRPC's own cap is 120 s): once a restarted server listens
    again, the worker finds it within that time instead of minutes later."""
    keepalive = KeepAliveOptions()
    backoff_ms = max(100, int(reconnect_max_s * 1000))
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


class TritonClassifier:
    def __init__(
        self,
        url: str,
        model: str,
        version: str,
        timeout_s: float,
        reconnect_max_s: float = 1.0,
    ) -> None:
        self._client = InferenceServerClient(url=url, channel_args=channel_args(reconnect_max_s))
        self._model = model
        self._version = version
        self._timeout_s = timeout_s
        self.model_ref = ModelRef(name=model, version=version or "latest")

    async def connect(self, wait_s: float = 60.0) -> ModelRef:
        """Wait until the model is ready; learn the version that will answer."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait_s),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                if not await self._client.is_model_ready(self._model, self._version):
                    raise InferenceServerException(f"model {self._model} is not ready")
        meta = await self._client.get_model_metadata(self._model, self._version, as_json=True)
        versions = meta.get("versions") or [self._version or "latest"]
        self.model_ref = ModelRef(name=self._model, version=str(self._version or versions[-1]))
        log.info("triton.ready", model=self._model, version=self.model_ref.version)
        return self.model_ref

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]:
        """Probabilities [N, classes] for a batch of RGB uint8 [N, 224, 224, 3] images,
        from ``model`` at ``version`` (default: the model and version this client was
        made for).

        One attempt, bounded by the timeout; the caller (streams.worker) owns retries,
        backoff and the circuit breaker, so that an outage pauses consumption instead
        of piling retries up here.
        """
        request = InferInput(modelrepo.IMAGE, list(images.shape), "UINT8")
        request.set_data_from_numpy(images)
        outputs = [InferRequestedOutput(modelrepo.PROBS)]
        name = model or self._model
        try:
            result = await self._client.infer(
                name,
                [request],
                model_version=version if model else self._version,
                outputs=outputs,
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as exc:
            raise InferenceError(
                f"Triton failed on a batch of {len(images)} for {name}: {exc}"
            ) from exc
        probs: npt.NDArray[np.float32] | None = result.as_numpy(modelrepo.PROBS)
        if probs is None or probs.shape[0] != images.shape[0]:
            raise InferenceError("Triton returned no probabilities for the batch")
        return probs.astype(np.float32, copy=False)

    async def is_ready(self, model: str, version: str) -> bool | None:
        """Whether Triton serves that version now; None when Triton cannot be asked."""
        try:
            return bool(
                await self._client.is_model_ready(model, version, client_timeout=self._timeout_s)
            )
        except InferenceServerException:
            return None

    async def close(self) -> None:
        await self._client.close()


class Classifier(Protocol):
    """One attempt at a batch: probabilities, or InferenceError."""

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]: ...


class RouteGone(InferenceError):
    """The model version a batch was sent to is not served any more (nor will be)."""


class ResilientClassifier:
    """Classify a batch however long Triton is away; nothing is dropped.

    The batch goes as up to ``inflight`` concurrent requests, so every Triton model
    instance has work and the dynamic batcher regroups them as it sees fit. A failed
    attempt backs off (doubling from 0.1 s up to ``retry_max_s``); the breaker keeps
    every batch from hammering a server that is down and lets one trial through now
    and then.
    """

    def __init__(
        self,
        client: Classifier,
        breaker: CircuitBreaker,
        inflight: int,
        retry_max_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.inflight = inflight
        self.retry_max_s = retry_max_s
        self._sleep = sleep

    async def classify(
        self,
        images: npt.NDArray[np.uint8],
        model: str = "",
        version: str = "",
        served: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """``served()``, asked after a failed attempt, says whether the version is still
        loaded: False (Triton answers, and it is not) raises RouteGone instead of
        retrying for ever; None (Triton cannot be asked) goes on waiting it out."""
        parts = min(self.inflight, len(images))
        delay = 0.1
        while True:
            try:
                self.breaker.before_call()
            except CircuitOpen:
                TRITON_FAILURES.labels("breaker_open").inc()
                BREAKER.set(int(self.breaker.state))
                await self._sleep(max(self.breaker.retry_in(), 0.05))
                continue
            INFLIGHT_REQUESTS.inc(parts)
            try:
                chunks = np.array_split(images, parts) if parts > 1 else [images]
                results = await asyncio.gather(
                    *(self.client.classify(c, model, version) for c in chunks)
                )
            except InferenceError as exc:
                if served is not None and await served() is False:
                    TRITON_FAILURES.labels("not_served").inc()
                    raise RouteGone(f"{model}:{version} is not served: {exc}") from exc
                self.breaker.record_failure()
                BREAKER.set(int(self.breaker.state))
                TRITON_FAILURES.labels("error").inc()
                log.warning("triton.unavailable", error=str(exc)[:300], retry_in_s=delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            finally:
                INFLIGHT_REQUESTS.dec(parts)
            if self.breaker.state is not BreakerState.CLOSED:
                log.info("triton.recovered")
            self.breaker.record_success()
            BREAKER.set(0)
            return np.concatenate(results) if len(results) > 1 else results[0]
