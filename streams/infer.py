"""Classification through Triton over async gRPC.

One request carries a micro-batch (uint8 NHWC; the model normalises on the server, so
the wire carries 150 KB per image instead of 600 KB). Every call has a deadline.
``TritonClassifier`` makes one attempt on one server; ``TritonPool`` spreads attempts
over several servers (least outstanding requests, failed servers ejected until a
readiness probe passes); ``ResilientClassifier`` splits a batch over
concurrent requests and waits out an outage: failed attempts back off exponentially
(capped) behind a circuit breaker, so consumption pauses and Kafka keeps the backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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
SERVER_REQUESTS = Counter(
    "camstream_worker_triton_requests_total", "Triton requests sent, per server", ["server"]
)
SERVER_HEALTHY = Gauge(
    "camstream_worker_triton_server_healthy",
    "1 while a Triton server is sent requests, 0 while ejected",
    ["server"],
)


# gRPC statuses by which a server that works refuses one request; any other failure
# (unavailable, deadline exceeded, internal) counts against the server.
REQUEST_STATUSES = frozenset(
    {"StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT", "StatusCode.UNIMPLEMENTED"}
)


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
            error_class = RequestRefused if exc.status() in REQUEST_STATUSES else InferenceError
            raise error_class(
                f"Triton failed on a batch of {len(images)} for {name}: {exc}"
            ) from exc
        probs: npt.NDArray[np.float32] | None = result.as_numpy(modelrepo.PROBS)
        if probs is None or probs.shape[0] != images.shape[0]:
            raise InferenceError("Triton returned no probabilities for the batch")
        return probs.astype(np.float32, copy=False)

    async def is_ready(self, model: str, version: str) -> bool | None:
        """True while Triton serves that version; False once Triton says it is not loaded
        (unloaded, failed, never there); None when Triton cannot tell: it is away, or the
        version is loaded but not ready at this moment (still loading, or a python stub
        being restarted after a crash), which a retry waits out."""
        try:
            timeout = self._timeout_s
            if await self._client.is_model_ready(model, version, client_timeout=timeout):
                return True
            index = await self._client.get_model_repository_index(
                as_json=True, client_timeout=timeout
            )
        except InferenceServerException:
            return None
        states = {
            entry.get("state")
            for entry in index.get("models", [])
            if entry.get("name") == model and str(entry.get("version", "")) == version
        }
        return None if states & PASSING_STATES else False

    async def probe(self) -> bool:
        """Whether the server is ready and serves this client's model (False when it
        cannot be asked): what re-admits an ejected server to a pool."""
        try:
            return bool(
                await self._client.is_server_ready(client_timeout=self._timeout_s)
            ) and bool(
                await self._client.is_model_ready(
                    self._model, self._version, client_timeout=self._timeout_s
                )
            )
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()


# Repository-index states of a version that is (or is about to be) served.
PASSING_STATES = frozenset({"READY", "LOADING"})


class Classifier(Protocol):
    """One attempt at a batch: probabilities, or InferenceError."""

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]: ...


class RequestRefused(InferenceError):
    """Triton answered and refused the request itself (no such model or version, a bad
    input): the server is well, so a pool keeps sending it other requests."""


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


class Server(Protocol):
    """What a pool needs of one server's client (``TritonClassifier``, or a fake)."""

    model_ref: ModelRef

    async def connect(self, wait_s: float = 60.0) -> ModelRef: ...

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]: ...

    async def is_ready(self, model: str, version: str) -> bool | None: ...

    async def probe(self) -> bool: ...

    async def close(self) -> None: ...


class _Member:
    """One server of a pool: its client, requests in flight, whether it is sent any."""

    __slots__ = ("address", "client", "healthy", "outstanding", "probing", "sent")

    def __init__(self, address: str, client: Server) -> None:
        self.address = address
        self.client = client
        self.healthy = False
        self.outstanding = 0
        self.probing: asyncio.Task[None] | None = None
        self.sent = SERVER_REQUESTS.labels(address)  # per request: no label lookup


class TritonPool:
    """One attempt at a batch, on the healthy server with the fewest requests in flight
    (ties in turn); a ``Classifier`` over several servers.

    A server whose request fails is ejected (unless it refused the request itself:
    ``RequestRefused``) and the request goes at once to another healthy one; only when
    none is left does the attempt raise InferenceError (so that
    ``ResilientClassifier``'s backoff and breaker take over). An ejected server is
    probed (server and model readiness), waiting ``probe_initial_s`` doubling up to
    ``probe_max_s``, and takes requests again once a probe passes. The hot path is a
    scan of a few members on the event loop: no locks.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, Server]],
        probe_initial_s: float = 0.2,
        probe_max_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not servers:
            raise ValueError("a Triton pool needs at least one server")
        self._members = [_Member(address, client) for address, client in servers]
        self._probe_initial_s = probe_initial_s
        self._probe_max_s = max(probe_max_s, probe_initial_s)
        self._sleep = sleep
        self._turn = 0
        self._joining: list[asyncio.Task[ModelRef | None]] = []
        self.model_ref = self._members[0].client.model_ref
        for member in self._members:
            SERVER_HEALTHY.labels(member.address).set(0)

    @classmethod
    def connect_to(
        cls,
        addresses: Sequence[str],
        model: str,
        version: str,
        timeout_s: float,
        reconnect_max_s: float = 1.0,
    ) -> TritonPool:
        """A pool of one ``TritonClassifier`` per address."""
        return cls(
            [
                (a, TritonClassifier(a, model, version, timeout_s, reconnect_max_s))
                for a in addresses
            ],
            probe_max_s=reconnect_max_s,
        )

    @property
    def healthy(self) -> list[str]:
        """The addresses requests go to now."""
        return [m.address for m in self._members if m.healthy]

    def outstanding(self, address: str) -> int:
        return next(m.outstanding for m in self._members if m.address == address)

    async def connect(self, wait_s: float = 60.0) -> ModelRef:
        """Wait until at least one server serves the model; the others join as they
        become ready (or are probed until they do). InferenceError when none is ready
        within ``wait_s``."""
        self._joining = [asyncio.ensure_future(self._join(m, wait_s)) for m in self._members]
        pending: set[asyncio.Future[ModelRef | None]] = set(self._joining)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                ref = task.result()
                if ref is not None:
                    self.model_ref = ref
                    return ref
        raise InferenceError(
            f"no Triton server became ready within {wait_s:.0f} s "
            f"({', '.join(m.address for m in self._members)}): start one, or fix "
            "CAMSTREAM_TRITON_GRPC"
        )

    async def _join(self, member: _Member, wait_s: float) -> ModelRef | None:
        try:
            ref = await member.client.connect(wait_s)
        except Exception as exc:
            log.warning("triton.server_not_ready", server=member.address, error=str(exc)[:300])
            self._eject(member)
            return None
        self._admit(member)
        return ref

    def _pick(self, tried: list[_Member]) -> _Member | None:
        members = self._members
        count = len(members)
        self._turn = (self._turn + 1) % count
        best: _Member | None = None
        for i in range(count):
            member = members[(self._turn + i) % count]
            if (
                member.healthy
                and member not in tried
                and (best is None or member.outstanding < best.outstanding)
            ):
                best = member
        if best is None and not any(m.healthy for m in members):
            # None is healthy: the request itself tries the ejected ones (in turn, as a
            # single server is tried), so a pool is never slower to come back than its
            # probes; a success takes the server back.
            untried = [m for m in members if m not in tried]
            best = min(untried, key=lambda m: m.outstanding) if untried else None
        return best

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]:
        """Probabilities from the first healthy server that answers; InferenceError
        when every healthy server failed (or none is healthy)."""
        tried: list[_Member] = []
        error: InferenceError | None = None
        while (member := self._pick(tried)) is not None:
            member.outstanding += 1
            member.sent.inc()
            try:
                probs = await member.client.classify(images, model, version)
            except RequestRefused as exc:  # the server is well; another may serve it
                error = exc
                tried.append(member)
            except InferenceError as exc:
                error = exc
                tried.append(member)
                self._eject(member)
            else:
                self._admit(member)
                return probs
            finally:
                member.outstanding -= 1
        if error is not None:
            raise error
        raise InferenceError(
            f"no Triton server is healthy ({', '.join(m.address for m in self._members)})"
        )

    async def is_ready(self, model: str, version: str) -> bool | None:
        """True if a healthy server serves that version, False if the healthy servers
        answer that they do not, None when no healthy server can say."""
        healthy = [m for m in self._members if m.healthy]
        answers = await asyncio.gather(*(m.client.is_ready(model, version) for m in healthy))
        if any(answers):
            return True
        if any(a is False for a in answers):
            return False
        return None

    def _admit(self, member: _Member) -> None:
        if not member.healthy:
            member.healthy = True
            SERVER_HEALTHY.labels(member.address).set(1)
            log.info("triton.server_admitted", server=member.address)

    def _eject(self, member: _Member) -> None:
        if member.healthy:
            member.healthy = False
            SERVER_HEALTHY.labels(member.address).set(0)
            log.warning("triton.server_ejected", server=member.address)
        if member.probing is None or member.probing.done():
            member.probing = asyncio.ensure_future(self._probe(member))

    async def _probe(self, member: _Member) -> None:
        delay = self._probe_initial_s
        while not member.healthy:
            await self._sleep(delay)
            try:
                ready = await member.client.probe()
            except Exception as exc:  # a probe that cannot ask must not end the probing
                log.warning("triton.probe_failed", server=member.address, error=str(exc)[:300])
                ready = False
            if ready:
                self._admit(member)
                return
            delay = min(delay * 2, self._probe_max_s)

    async def close(self) -> None:
        tasks = [t for t in self._joining if not t.done()]
        tasks += [m.probing for m in self._members if m.probing is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(m.client.close() for m in self._members))
