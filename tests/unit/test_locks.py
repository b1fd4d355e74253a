"""camstream.locks: one holder at a time, named to whoever is refused, on real files
(two open file descriptions of one file conflict under flock, even in one process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from camstream.locks import HeldLock


class Refused(Exception):
    pass


def _command(record: Any) -> str:
    return str(record["command"])


def test_a_second_holder_is_refused_with_the_first_holders_record(tmp_path: Path) -> None:
    # Given a lock held with a record naming its command
    path = tmp_path / "sub" / "x.lock"
    first = HeldLock(path).acquire(lambda: {"pid": 1, "command": "first"}, 0, Refused)
    second = HeldLock(path)
    # When another asks for it, then it is refused, and the holder can be read
    with pytest.raises(Refused):
        second.acquire(lambda: {"pid": 2, "command": "second"}, 0.1, Refused)
    assert not second.held
    assert second.holder(_command, "unknown") == "first"
    # Then, released, the file stays, empty, and the lock is free for the next
    first.release()
    assert path.read_text() == ""
    assert second.holder(_command, "unknown") is None
    with second.acquire(lambda: {"pid": 2, "command": "second"}, 0, Refused):
        assert json.loads(path.read_text())["command"] == "second"
    assert not second.held


def test_a_holder_without_a_readable_record_is_unknown_after_the_wait(tmp_path: Path) -> None:
    # Given a lock held whose record has not the fields the reader wants
    path = tmp_path / "x.lock"
    with HeldLock(path).acquire(lambda: {"pid": 1}, 0, Refused):
        # When it is read, then after the wait the holder is the given unknown
        assert HeldLock(path).holder(_command, "unknown", wait_s=0.1) == "unknown"


def test_entering_a_lock_not_acquired_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="acquire"), HeldLock(tmp_path / "x.lock"):
        pass
