"""A small circuit breaker for the worker's calls to Triton.

closed: calls go through; ``failures`` consecutive failures open it.
open: calls are refused at once (no request leaves) until ``reset_s`` has passed.
half-open: one trial call goes through; success closes, failure re-opens.

The worker does not drop a batch the breaker refuses: it waits and tries again, so the
agent stops taking frames (Kafka keeps them, lag grows, memory stays bounded) and
resumes by itself once a trial call succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from camstream.errors import CamstreamError


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(CamstreamError, RuntimeError):
    """The breaker refused a call: the service failed recently."""


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.state = BreakerState.CLOSED

    def before_call(self) -> None:
        """Raise CircuitOpen when the call must not go out now."""
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                raise CircuitOpen(f"Triton failed {self._consecutive} times in a row")
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            raise CircuitOpen("a trial call is in flight")
        self._trial_in_flight = True

    def record_success(self) -> None:
        self._consecutive = 0
        self._trial_in_flight = False
        self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._consecutive += 1
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self._consecutive >= self.failures:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when closed)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))
