"""Server-sent events: every page gets the tiles that changed, coalesced, a few times a
second.

Each ``tick_s`` the broadcaster takes the cameras the readers changed (and, every
``refresh_s``, every camera, for what changes with time alone: stale, rates) and
renders each changed tile once, as JSON; a tile that renders as last sent is not sent.
Each client holds at most one pending tile per camera: a client that reads slowly gets
the newest state of each camera when it catches up, the states in between are dropped
(counted), and its memory never exceeds one tile per camera. No client holds up the
others or the readers. Beyond ``max_clients`` a new client is refused (the page's
EventSource retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from camstream.view.state import FleetState

CLIENTS = Gauge("camstream_view_sse_clients", "Pages (event streams) connected")
EVENTS = Counter("camstream_view_sse_events_total", "Events sent to pages")
TILES_SENT = Counter("camstream_view_tiles_sent_total", "Tile updates sent to pages")
COALESCED = Counter(
    "camstream_view_tiles_coalesced_total",
    "Tile updates replaced by a newer one before a slow page read them",
)
REFUSED = Counter("camstream_view_sse_refused_total", "Event streams refused (too many pages)")
CAMERAS = Gauge("camstream_view_cameras", "Cameras on the wall, by status", ["status"])
CAMERA_MODEL = Gauge(
    "camstream_view_camera_model_info",
    "1 for the model version that made each camera's latest prediction",
    ["camera", "model", "version"],
)

KEEPALIVE_S = 15.0
RETRY_MS = 2000


class TooManyClients(Exception):
    """Every event-stream slot is taken."""


@dataclass(eq=False)
class Client:
    """One page's event stream: the tiles it has not read yet, one per camera."""

    pending: dict[str, str | None] = field(default_factory=dict)  # None: removed
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    coalesced: int = 0

    def offer(self, updates: dict[str, str | None]) -> None:
        replaced = len(self.pending.keys() & updates.keys())
        if replaced:
            self.coalesced += replaced
            COALESCED.inc(replaced)
        self.pending.update(updates)
        self.wake.set()

    def take(self) -> dict[str, str | None]:
        taken, self.pending = self.pending, {}
        self.wake.clear()
        return taken


def sse(event: str, data: str) -> str:
    """One server-sent event; ``data`` holds no newline (compact JSON)."""
    return f"event: {event}\ndata: {data}\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Broadcaster:
    def __init__(
        self,
        state: FleetState,
        *,
        tick_s: float = 0.25,
        refresh_s: float = 1.0,
        max_clients: int = 64,
    ) -> None:
        self.state = state
        self.tick_s = tick_s
        self.refresh_s = refresh_s
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self.closed = asyncio.Event()
        self._last: dict[str, str] = {}
        self._next_refresh = 0.0
        self._summary = _dumps(state.summary())
        self._models: dict[str, tuple[str, str]] = {}

    # The loop -----------------------------------------------------------------------

    def step(self) -> dict[str, str | None]:
        """One tick: the changed tiles, rendered, offered to every client."""
        changed, removed = self.state.take_changes()
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_s
            removed |= self.state.prune()
            changed |= set(self.state.camera_ids())
        updates: dict[str, str | None] = {}
        for camera_id, tile in self.state.tiles(changed - removed).items():
            self._export_model(camera_id, tile["model"])
            text = _dumps(tile)
            if self._last.get(camera_id) != text:
                self._last[camera_id] = text
                updates[camera_id] = text
        for camera_id in removed:
            self._export_model(camera_id, "")
            if self._last.pop(camera_id, None) is not None:
                updates[camera_id] = None
        if updates:
            summary = self.state.summary()
            for status in ("live", "stale", "waiting"):
                CAMERAS.labels(status).set(summary[status])
            self._summary = _dumps(summary)
            for client in self.clients:
                client.offer(updates)
        return updates

    def _export_model(self, camera_id: str, model: str) -> None:
        """Keep camstream_view_camera_model_info at the camera's current version."""
        name, _, version = model.rpartition(":") if ":" in model else (model, "", "")
        labels = (name, version)
        previous = self._models.get(camera_id)
        if previous == labels or (previous is None and not model):
            return
        if previous is not None:
            with contextlib.suppress(KeyError):
                CAMERA_MODEL.remove(camera_id, *previous)
        if model:
            self._models[camera_id] = labels
            CAMERA_MODEL.labels(camera_id, *labels).set(1)
        else:
            self._models.pop(camera_id, None)

    async def run(self) -> None:
        while not self.closed.is_set():
            self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), self.tick_s)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.closed.set()
        for client in self.clients:
            client.wake.set()

    # Clients ------------------------------------------------------------------------

    def connect(self) -> Client:
        if len(self.clients) >= self.max_clients:
            REFUSED.inc()
            raise TooManyClients(f"{self.max_clients} pages are connected already")
        client = Client()
        self.clients.add(client)
        CLIENTS.set(len(self.clients))
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        CLIENTS.set(len(self.clients))

    def snapshot(self) -> str:
        """A stream's first event: every tile, the fleet's summary, the server's clock."""
        tiles = self.state.tiles()
        payload = {
            "server_ms": int(time.time() * 1000),
            "summary": self.state.summary(),
            "stale_s": self.state.stale_s,
            "tiles": [tiles[k] for k in sorted(tiles)],
        }
        return sse("snapshot", _dumps(payload))

    async def stream(self, client: Client) -> AsyncIterator[str]:
        """One client's event stream, until it leaves or the server closes."""
        try:
            yield f"retry: {RETRY_MS}\n\n" + self.snapshot()
            EVENTS.inc()
            while not self.closed.is_set():
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                updates = client.take()
                if not updates or self.closed.is_set():
                    continue
                tiles = [text for text in updates.values() if text is not None]
                removed = [camera_id for camera_id, text in updates.items() if text is None]
                yield sse(
                    "tiles",
                    f'{{"server_ms":{int(time.time() * 1000)},"summary":{self._summary},'
                    f'"tiles":[{",".join(tiles)}],"removed":{_dumps(removed)}}}',
                )
                client.sent += 1
                EVENTS.inc()
                TILES_SENT.inc(len(tiles))
        finally:
            self.disconnect(client)
