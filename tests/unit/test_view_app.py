"""camstream.view's web app, served by uvicorn on 127.0.0.1 in this process (no Kafka:
the state is filled by hand), and its event fan-out and bind policy.

httpx's in-process ASGI client hangs on an endless event stream, so every request here
goes over a real socket, and streams are read for a bounded number of events."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from benchmarks.view import EventStream
from camstream.cli.view import joined_settings
from camstream.errors import ConfigError
from camstream.settings import Settings
from camstream.stack.local import StackInfo
from camstream.stack.process import StackLock
from camstream.view.app import SESSION_COOKIE, build_app, session_value
from camstream.view.events import Broadcaster, Client
from camstream.view.launch import check_bind, is_loopback, page_url
from camstream.view.server import ViewServer, bind_socket
from camstream.view.state import FleetState
from tests.unit.test_view_state import Clock, prediction

TOKEN = "a-token-long-enough-1234"


@contextmanager
def serving(state: FleetState, token: str | None = None, **options: Any) -> Iterator[str]:
    """The view's app on a free port; yields its address. Stopped as SIGTERM stops it."""
    broadcaster = Broadcaster(state, tick_s=0.05, **options)
    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(build_app(state, broadcaster, token), log_config=None, lifespan="on")
    server = ViewServer(config, broadcaster)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.handle_exit(15, None)
        thread.join(10)
        sock.close()
    assert not thread.is_alive(), "the server did not stop with its event streams open"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.request.urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read() if response.status != 200 or "events" not in path else b""
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, body
    connection.close()
    return result


def read_events(url: str, count: int, token: str | None = None, timeout_s: float = 10) -> list:
    events: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()

    def keep(event: str, payload: dict[str, Any]) -> None:
        events.append((event, payload))
        if len(events) >= count:
            done.set()

    stream = EventStream(url, token, on_event=keep)
    stream.start()
    done.wait(timeout_s)
    stream.halt.set()
    stream.join(5)
    assert stream.error is None, stream.error
    return events


def test_without_token_serves_loopback_and_refuses_other_hosts() -> None:
    state = FleetState()
    state.apply_prediction(prediction("cam-1", 1, time.time()))
    with serving(state) as url:
        status, headers, body = get(url)
        assert status == 200
        assert b"tile-template" in body
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        status, _headers, body = get(url + "api/cameras")
        assert status == 200
        assert [t["camera"] for t in json.loads(body)["tiles"]] == ["cam-1"]
        # A page of another site reaching 127.0.0.1 through its own DNS name
        status, _headers, body = get(url + "api/cameras", {"Host": "evil.example:8090"})
        assert status == 403
        assert b"cam-1" not in body


def test_with_token_nothing_without_it() -> None:
    state = FleetState()
    state.apply_prediction(prediction("cam-1", 1, time.time()))
    state.set_thumbnail("cam-1", b"\xff\xd8 a frame \xff\xd9")
    with serving(state, TOKEN) as url:
        for path in (
            "",
            "camera?id=cam-1",
            "api/cameras",
            "api/camera?id=cam-1",
            "api/thumbnail?id=cam-1",
            "api/events",
            "healthz",
            "static/view.js",
        ):
            status, headers, body = get(url + path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith("Bearer")
            assert b"cam-1" not in body and b"a frame" not in body
        status, *_ = get(url + "api/cameras", {"Authorization": "Bearer wrong-token-0123456"})
        assert status == 401
        status, *_ = get(url + "api/cameras", {"Cookie": f"{SESSION_COOKIE}=forged"})
        assert status == 401
        # With it: the header, the page's cookie, or ?token= on an API call
        status, headers, body = get(
            url + "api/thumbnail?id=cam-1", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert (status, headers["content-type"], body) == (
            200,
            "image/jpeg",
            b"\xff\xd8 a frame \xff\xd9",
        )
        status, *_ = get(
            url + "api/cameras", {"Cookie": f"{SESSION_COOKIE}={session_value(TOKEN)}"}
        )
        assert status == 200
        status, *_ = get(url + f"api/cameras?token={TOKEN}")
        assert status == 200


def test_page_opened_with_token_gets_a_session_cookie_and_a_clean_url() -> None:
    with serving(FleetState(), TOKEN) as url:
        status, headers, _body = get(url + f"camera?id=cam-1&token={TOKEN}")
        assert status == 303
        assert headers["location"] == "/camera?id=cam-1"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}={session_value(TOKEN)};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie


def test_event_stream_sends_a_snapshot_then_changed_tiles() -> None:
    state = FleetState()
    state.apply_prediction(prediction("cam-1", 1, time.time()))
    with serving(state) as url:
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.extend(read_events(url, 2)))
        reader.start()
        time.sleep(0.5)
        state.apply_prediction(prediction("cam-2", 1, time.time(), label="squirrel"))
        reader.join(15)
    (first, snapshot), (second, update) = result
    assert first == "snapshot"
    assert [t["camera"] for t in snapshot["tiles"]] == ["cam-1"]
    assert second == "tiles"
    assert [(t["camera"], t["label"]) for t in update["tiles"]] == [("cam-2", "squirrel")]
    assert update["summary"]["cameras"] == 2


def test_stream_beyond_max_clients_is_refused_with_503() -> None:
    with serving(FleetState(), max_clients=1) as url:
        first = EventStream(url)
        first.start()
        time.sleep(0.5)
        status, headers, _ = get(url + "api/events")
        first.halt.set()
        first.join(5)
    assert status == 503
    assert headers["retry-after"] == "5"


def test_slow_client_holds_one_pending_tile_per_camera() -> None:
    # Given a client that reads nothing while 3 cameras change 50 times
    state = FleetState()
    broadcaster = Broadcaster(state, tick_s=0.01)
    client = broadcaster.connect()
    for seq in range(50):
        for camera in ("a", "b", "c"):
            state.apply_prediction(prediction(camera, seq, 1_800_000_000 + seq))
        broadcaster.step()
    # Then it holds the latest tile of each, the states between them dropped and counted
    pending = client.take()
    assert sorted(pending) == ["a", "b", "c"]
    assert all(json.loads(t or "{}")["seq"] == 49 for t in pending.values())
    assert client.coalesced == 49 * 3


def test_removed_camera_is_sent_as_removed() -> None:
    # Given a camera known from one DLQ record, that a page has seen
    clock = Clock()
    state = FleetState(forget_s=10, clock=clock)
    broadcaster = Broadcaster(state, refresh_s=0)
    client = broadcaster.connect()
    state.apply_dlq("gone", {})
    assert list(broadcaster.step()) == ["gone"]
    client.take()
    # When nothing more comes from it for forget_s
    clock.now += 11
    # Then pages hear it is gone
    assert broadcaster.step() == {"gone": None}
    assert client.take() == {"gone": None}
    assert state.camera_ids() == []


def test_unchanged_tile_is_not_sent_again() -> None:
    state = FleetState()
    broadcaster = Broadcaster(state, refresh_s=0)
    state.apply_prediction(prediction("a", 1, time.time()))
    assert list(broadcaster.step()) == ["a"]
    assert broadcaster.step() == {}


def test_client_event_is_a_plain_asyncio_event() -> None:
    async def woken() -> bool:
        client = Client()
        client.offer({"a": "{}"})
        await asyncio.wait_for(client.wake.wait(), 1)
        return client.take() == {"a": "{}"} and not client.wake.is_set()

    assert asyncio.run(woken())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "camera-wall.local"])
def test_non_loopback_bind_without_token_is_refused_naming_the_fix(host: str) -> None:
    with pytest.raises(ConfigError, match="CAMSTREAM_VIEW_TOKEN"):
        check_bind(host, None)
    check_bind(host, TOKEN)


def test_loopback_binds_need_no_token_and_short_tokens_are_refused() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert is_loopback(host)
        check_bind(host, None)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_bind("127.0.0.1", "short")
    assert page_url("0.0.0.0", 8090) == "http://127.0.0.1:8090/"
    assert page_url("::1", 8090) == "http://[::1]:8090/"


def test_view_joins_the_local_stack_of_the_state_folder(tmp_path: Path) -> None:
    # Given a stack running from the state folder (its lock held, its stack.json written)
    settings = Settings(state_dir=tmp_path)
    assert joined_settings(settings, None)[2] == "the default"
    info = StackInfo(kafka_bootstrap="127.0.0.1:39092", topic_prefix="site1.",
                     feast_repo=str(tmp_path / "feast"))  # fmt: skip
    (tmp_path / "stack.json").write_text(json.dumps(asdict(info)))
    with StackLock(tmp_path):
        # When the view starts with no Kafka address of its own
        joined, repo, source = joined_settings(settings, None)
        # Then it reads that stack's topics; --bootstrap still wins
        assert (joined.kafka_bootstrap, joined.predictions_topic) == (
            "127.0.0.1:39092",
            "site1.predictions",
        )
        assert repo == tmp_path / "feast" and "local stack" in source
        assert joined_settings(settings, "kafka:9092")[0].kafka_bootstrap == "kafka:9092"
