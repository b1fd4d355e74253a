"""Logs for people on a terminal, JSON for files and pipes (camstream.observability)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import structlog

from camstream.observability import configure_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("feast").setLevel(logging.NOTSET)
    structlog.reset_defaults()


def _log_all(stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch, level: str | None) -> str:
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging(level)
    log = structlog.get_logger("camstream.test")
    log.info("stack.service_started", service="kafka")
    log.warning("stack.worker_exited", worker=0, returncode=-9)
    logging.getLogger("aiokafka").info("a library's chatter")
    logging.getLogger("aiokafka").warning("a library's warning")
    return re.sub(r"\x1b\[[0-9;]*m", "", stderr.getvalue())  # colours apart


def test_terminal_logs_are_for_people_and_show_only_warnings_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given stderr is a terminal and no level is set, when events of both levels come
    text = _log_all(_Terminal(), monkeypatch, None)
    lines = text.splitlines()
    # Then only the warnings show, as text rather than JSON, ours and the libraries'
    assert len(lines) == 2, text
    assert "stack.worker_exited" in lines[0] and "returncode=-9" in lines[0]
    assert "a library's warning" in lines[1] and "aiokafka" in lines[1]
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert "service_started" not in text and "chatter" not in text


def test_terminal_shows_info_when_the_level_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given stderr is a terminal and CAMSTREAM_LOG_LEVEL=INFO
    text = _log_all(_Terminal(), monkeypatch, "INFO")
    # Then info events show too, still for people
    assert "stack.service_started" in text and "service=kafka" in text
    assert "a library's chatter" in text
    assert not any(line.lstrip().startswith("{") for line in text.splitlines())


def test_files_and_pipes_get_one_json_object_per_line_at_info(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given stderr is a file (a child of `camstream up`), when events come
    text = _log_all(io.StringIO(), monkeypatch, None)
    records = [json.loads(line) for line in text.splitlines()]
    # Then every line is JSON, info included, the libraries' records too
    assert [r["event"] for r in records] == [
        "stack.service_started",
        "stack.worker_exited",
        "a library's chatter",
        "a library's warning",
    ]
    assert records[0]["service"] == "kafka" and records[0]["level"] == "info"
    assert records[2]["logger"] == "aiokafka" and records[3]["level"] == "warning"
    assert all("timestamp" in r for r in records)
