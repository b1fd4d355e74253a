"""Where the CPU went during a benchmark: per process group, this process, the machine.

The local stack starts every service in its own process group (camstream.stack.process),
so a group's CPU is a service's, children included (Triton's python backend stubs).
Linux only: it reads /proc, as the local stack's machines are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the command's closing parenthesis: state is field 3.
_PGRP, _UTIME, _STIME = 5 - 3, 14 - 3, 15 - 3


def group_cpu_s(pgids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of the live processes of each process group."""
    totals = dict.fromkeys(pgids, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we read
        pgrp = int(fields[_PGRP])
        if pgrp in totals:
            totals[pgrp] += (int(fields[_UTIME]) + int(fields[_STIME])) / _TICK
    return totals


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds, all cores together, since boot: busy (not idle, iowait or stolen),
    and stolen (a virtual machine's cores, taken by its host: noise to watch)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) for x in stat.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def _own_cpu_s() -> float:
    """This process, every thread, and its children that have exited (a subprocess run
    by the bench counts as the bench's)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    own_s: float
    groups: dict[str, float]
    machine_s: float
    steal_s: float


class CpuMeter:
    """CPU of this process, of named process groups and of the rest of the machine
    between ``start()`` and ``stop()``, per frame of work done."""

    def __init__(self, groups: Mapping[str, int]) -> None:
        self.groups = dict(groups)
        self._start: Snapshot | None = None

    def _snapshot(self) -> Snapshot:
        by_pgid = group_cpu_s(set(self.groups.values()))
        return Snapshot(
            time.perf_counter(),
            _own_cpu_s(),
            {name: by_pgid[pgid] for name, pgid in self.groups.items()},
            *machine_cpu_s(),
        )

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self, frames: int) -> dict[str, float]:
        """Milliseconds of CPU per frame: ``bench`` (this process), each group, and
        ``other`` (the rest of the machine); ``busy_cores``: the machine's mean load,
        ``other_cores``: the part of it that was none of ours (another program's work
        disturbing the figures),
        ``stolen_cores``: the cores its host took away meanwhile (0 on bare metal)."""
        assert self._start is not None, "start() first"
        end, begin = self._snapshot(), self._start
        own = end.own_s - begin.own_s
        groups = {name: end.groups[name] - begin.groups[name] for name in self.groups}
        machine = end.machine_s - begin.machine_s
        per_frame = {"bench": own, **groups}
        per_frame["other"] = max(0.0, machine - sum(per_frame.values()))
        figures = {name: round(1000 * s / max(1, frames), 2) for name, s in per_frame.items()}
        wall = end.wall_s - begin.wall_s
        stolen = end.steal_s - begin.steal_s
        figures["busy_cores"] = round(machine / wall, 2) if wall > 0 else 0.0
        figures["other_cores"] = round(per_frame["other"] / wall, 2) if wall > 0 else 0.0
        figures["stolen_cores"] = round(stolen / wall, 2) if wall > 0 else 0.0
        return figures
