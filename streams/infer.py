"""Classification through Triton over async gRPC.

One request carries a micro-batch (uint8 NHWC; the model normalises on the server, so
the wire carries 150 KB per image instead of 600 KB). Every call has a deadline; the
worker retries failed batches with backoff behind a circuit breaker.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import structlog
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential_jitter
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    InferInput,
    InferRequestedOutput,
    KeepAliveOptions,
)
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from camstream.records import ModelRef

log = structlog.get_logger(__name__)

INPUT = "IMAGE"
OUTPUT = "PROBS"


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


class InferenceError(RuntimeError):
    """Triton could not classify a batch before the deadline."""


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

    async def classify(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Probabilities [N, classes] for a batch of RGB uint8 [N, 224, 224, 3] images.

        One attempt, bounded by the timeout; the caller (streams.worker) owns retries,
        backoff and the circuit breaker, so that an outage pauses consumption instead
        of piling retries up here.
        """
        request = InferInput(INPUT, list(images.shape), "UINT8")
        request.set_data_from_numpy(images)
        outputs = [InferRequestedOutput(OUTPUT)]
        try:
            result = await self._client.infer(
                self._model,
                [request],
                model_version=self._version,
                outputs=outputs,
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as exc:
            raise InferenceError(f"Triton failed on a batch of {len(images)}: {exc}") from exc
        probs = result.as_numpy(OUTPUT)
        if probs is None or probs.shape[0] != images.shape[0]:
            raise InferenceError("Triton returned no probabilities for the batch")
        return probs.astype(np.float32, copy=False)

    async def close(self) -> None:
        await self._client.close()
