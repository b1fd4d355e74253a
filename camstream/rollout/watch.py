"""After the switch, verdicts on Triton's statistics: the drain (``Quiet``: a version
that left use has stopped executing) and the watch (``watch_verdict``: the new
version's error rate and mean latency against ``WatchLimits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WATCH_MIN_REQUESTS = 5  # a mean latency over fewer requests is not judged


class Quiet:
    """Drain: True once ``count`` (a version's executions) has not moved for
    ``quiet_s``; a count that drops (the version reloaded) starts again."""

    def __init__(self, quiet_s: float, now: float, count: int) -> None:
        self.quiet_s = quiet_s
        self.count = count
        self.since = now

    def observe(self, now: float, count: int) -> bool:
        if count != self.count:
            self.count, self.since = count, now
        return now - self.since >= self.quiet_s


@dataclass(frozen=True)
class VersionStats:
    """Triton's cumulative statistics of one loaded version."""

    executions: int
    success: int
    success_ns: int
    fail: int

    @classmethod
    def from_json(cls, stats: Mapping[str, Any]) -> VersionStats:
        inference = stats.get("inference_stats") or {}
        success = inference.get("success") or {}
        fail = inference.get("fail") or {}
        return cls(
            int(stats.get("execution_count", 0)),
            int(success.get("count", 0)),
            int(success.get("ns", 0)),
            int(fail.get("count", 0)),
        )


@dataclass(frozen=True)
class WatchLimits:
    watch_s: float = 60.0
    max_latency_ms: float = 500.0
    max_error_rate: float = 0.01


def watch_verdict(start: VersionStats, now: VersionStats, limits: WatchLimits) -> str | None:
    """Why the new version must go back (failures, error rate, mean latency since the
    watch began), or None while it is within the limits."""
    ok, failed = now.success - start.success, now.fail - start.fail
    total = ok + failed
    if failed > 0 and failed / total > limits.max_error_rate:
        return (
            f"watch: {failed} failed of {total} requests ({failed / total:.1%}), above the "
            f"error rate limit {limits.max_error_rate:.1%}"
        )
    if ok >= WATCH_MIN_REQUESTS:
        mean_ms = (now.success_ns - start.success_ns) / ok / 1e6
        if mean_ms > limits.max_latency_ms:
            return (
                f"watch: mean request latency {mean_ms:.1f} ms over {ok} requests, above "
                f"{limits.max_latency_ms:g} ms"
            )
    return None
