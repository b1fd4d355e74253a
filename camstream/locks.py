"""One process at a time: an exclusive ``flock`` on a file that names its holder.

The kernel drops the lock when the holder dies, however it dies, so nothing is left to
clean up; the holder writes a JSON record of itself (pid, command, ...) into the file
once it holds it, and a process refused reads that record to say who holds it. The file
is opened without ``O_TRUNC`` (it is not ours until the lock is), emptied on release,
and never removed (a removed lock file would let two holders lock two different files).

Used by the local stack's state folder (``camstream.stack.process.StackLock``) and the
live rollout's model repository (``camstream.rollout.rollout_lock``), each with its own
record and refusal. Standard library only: `camstream up` checks its lock before
anything heavy is imported. (The ``filelock`` package locks the same way but records no
holder, so a refusal could not name who runs.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

_T = TypeVar("_T")

POLL_S = 0.05


class HeldLock:
    """An exclusive ``flock`` on ``path``, with the holder's record in the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(
        self,
        record: Callable[[], Mapping[str, Any]],
        wait_s: float,
        refuse: Callable[[], BaseException],
    ) -> Self:
        """Take the lock, waiting up to ``wait_s``, then write ``record()`` into the file
        (made once held, so that its times say since when); after ``wait_s`` without it,
        raise ``refuse()`` (which may read ``holder``). Taking a lock this object already
        holds does nothing."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never O_TRUNC: not ours yet
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise refuse() from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(dict(record())) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the holder's record and let the lock go (the file stays)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(
        self, parse: Callable[[Mapping[str, Any]], _T], unknown: _T, wait_s: float = 0.5
    ) -> _T | None:
        """``parse(record)`` of the process holding the lock; None when it is free.

        A holder that has just locked writes its record a moment later: while the
        record is absent or ``parse`` rejects it (KeyError, ValueError, TypeError), read
        again for up to ``wait_s``, then ``unknown``."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            deadline = time.monotonic() + wait_s
            while True:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    record = json.loads(os.pread(fd, 4096, 0) or b"null")
                    if isinstance(record, dict):
                        return parse(record)
                if time.monotonic() >= deadline:
                    return unknown
                time.sleep(POLL_S)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        """``with lock.acquire(...):`` holds it for the block."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: acquire() the lock before entering it")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
