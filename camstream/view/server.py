"""Serving the view: uvicorn with the Starlette app, the Kafka readers and the fan-out.

``serve`` runs until SIGTERM or SIGINT: uvicorn stops accepting, every event stream
ends at once (``Broadcaster.close``: uvicorn would otherwise wait for each page to
leave), the Kafka readers stop; within a second or two.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from camstream.errors import ConfigError
from camstream.settings import Settings
from camstream.view.app import build_app
from camstream.view.events import Broadcaster
from camstream.view.feed import start_readers
from camstream.view.launch import DEFAULT_PORT, check_bind, page_url
from camstream.view.state import FleetState
from camstream.view.thumbnails import Thumbnailer

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ViewConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: a free port
    token: str | None = None
    history_s: float = 300.0
    stale_s: float = 5.0
    thumbnail_width: int = 320
    thumbnail_interval_s: float = 1.0
    max_clients: int = 64
    max_cameras: int = 1000
    tick_s: float = 0.25
    feast_repo: Path | None = None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, so the port is known (and taken) before the server runs."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the view cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
            "(0 picks a free one)"
        ) from exc
    sock.listen(2048)
    return sock


class ViewServer(uvicorn.Server):
    """uvicorn's server, whose stop signal also ends every event stream."""

    def __init__(self, config: uvicorn.Config, broadcaster: Broadcaster) -> None:
        super().__init__(config)
        self.broadcaster = broadcaster
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.broadcaster.close)


def serve(
    settings: Settings, config: ViewConfig, on_ready: Callable[[str], None] | None = None
) -> None:
    """Run the view until SIGTERM/SIGINT (from the main thread: signals)."""
    check_bind(config.host, config.token)
    sock = bind_socket(config.host, config.port)
    port = int(sock.getsockname()[1])
    state = FleetState(stale_s=config.stale_s, max_cameras=config.max_cameras)
    broadcaster = Broadcaster(state, tick_s=config.tick_s, max_clients=config.max_clients)
    stop = threading.Event()
    thumbnails = Thumbnailer(config.thumbnail_width, config.thumbnail_interval_s)
    server = ViewServer(
        uvicorn.Config(
            build_app(state, broadcaster, config.token),
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        ),
        broadcaster,
    )
    readers = start_readers(settings, state, thumbnails, stop, config.history_s, config.feast_repo)
    url = page_url(config.host, port)
    log.info("view.serving", url=url, host=config.host, port=port, token=bool(config.token))
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
        sock.close()
        log.info("view.stopped")
