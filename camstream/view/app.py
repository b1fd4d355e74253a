"""The view's web application: pages, their data, thumbnails and the event stream.

Routes, every one behind ``ViewAuth``:

- ``/`` the wall of cameras; ``/camera?id=ID`` one camera's page;
- ``/static/...`` the pages' scripts and style (plain files, no build step);
- ``/api/cameras`` every tile; ``/api/camera?id=ID`` one camera's tile and history;
- ``/api/thumbnail?id=ID`` its latest thumbnail (JPEG);
- ``/api/events`` server-sent events: a ``snapshot``, then ``tiles`` as they change;
- ``/healthz`` the fleet's summary.

``ViewAuth`` is plain ASGI middleware (event streams pass straight through). Without a
token (a loopback bind) every request from this machine is served, if it names a
loopback host: a page of another site cannot reach the view through a DNS name that
points at 127.0.0.1. With a token, a request carries it as ``Authorization: Bearer
TOKEN``, as the session cookie a page gets when first opened with ``?token=TOKEN``,
or as ``?token=`` itself; any other request gets 401 and nothing else: no tile, no
thumbnail, no frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from camstream.view.events import Broadcaster, TooManyClients
from camstream.view.state import FleetState

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "camstream_view_session"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
LOGIN_PATHS = frozenset({"/", "/camera"})

UNAUTHORIZED = Counter("camstream_view_unauthorized_total", "Requests refused: no valid token")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Every response: no sniffing, no framing, nothing loaded from elsewhere, no referrer
# (the first URL may hold the token).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


def session_value(token: str) -> str:
    """The session cookie's value: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"camstream-view-session", hashlib.sha256).hexdigest()


def host_name(scope: Scope) -> str:
    """The Host header's name, without its port (``[::1]`` keeps its brackets)."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = str(value.decode("latin-1")).lower()
            if host.startswith("["):
                return host[: host.find("]") + 1]
            return host.split(":", 1)[0]
    return ""


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class ViewAuth:
    """ASGI middleware: the token check described in the module's docstring."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        verdict = self.verdict(scope)
        if verdict == "ok":
            await self.app(scope, receive, send_secured)
        elif verdict == "login":
            await self._login(scope, send_secured)
        else:
            UNAUTHORIZED.inc()
            await self._refuse(send_secured, verdict)

    def verdict(self, scope: Scope) -> str:
        """ok; login (a page opened with the right ?token=); host (no token, and a Host
        that is not loopback); token (no valid token)."""
        if self.token is None or self.session is None:
            return "ok" if host_name(scope) in LOOPBACK_HOSTS else "host"
        headers = dict(scope.get("headers", []))
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization.startswith("Bearer ") and _same(authorization[7:].strip(), self.token):
            return "ok"
        with contextlib.suppress(CookieError):
            cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
            if SESSION_COOKIE in cookie and _same(cookie[SESSION_COOKIE].value, self.session):
                return "ok"
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query and _same(query["token"], self.token):
            # A page opened with the token keeps it as a cookie, out of its URL.
            return "login" if scope["path"] in LOGIN_PATHS else "ok"
        return "token"

    async def _login(self, scope: Scope, send: Send) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        rest = [(k, v) for k, v in query if k != "token"]
        location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        cookie = f"{SESSION_COOKIE}={self.session}; HttpOnly; SameSite=Strict; Path=/"
        headers = [
            (b"location", location.encode()),
            (b"set-cookie", cookie.encode()),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, send: Send, verdict: str) -> None:
        if verdict == "host":
            status = 403
            text = (
                "this view answers requests for 127.0.0.1 or localhost only; to serve other "
                "hosts, start it with --host and CAMSTREAM_VIEW_TOKEN set"
            )
        else:
            status = 401
            text = (
                "unauthorized: open the view once as /?token=<CAMSTREAM_VIEW_TOKEN>, or send "
                "'Authorization: Bearer <CAMSTREAM_VIEW_TOKEN>'"
            )
        body = (text + "\n").encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="camstream view"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_app(state: FleetState, broadcaster: Broadcaster, token: str | None = None) -> ViewAuth:
    """The view's ASGI application; the broadcaster runs for the app's lifespan."""

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    async def camera_page(_request: Request) -> Response:
        return FileResponse(STATIC_DIR / "camera.html", headers={"cache-control": "no-cache"})

    async def cameras(_request: Request) -> Response:
        tiles = state.tiles()
        return JSONResponse(
            {"summary": state.summary(), "tiles": [tiles[k] for k in sorted(tiles)]}
        )

    async def camera(request: Request) -> Response:
        detail = state.detail(request.query_params.get("id", ""))
        if detail is None:
            return JSONResponse({"error": "no such camera"}, status_code=404)
        return Response(json.dumps(detail, separators=(",", ":")), media_type="application/json")

    async def thumbnail(request: Request) -> Response:
        jpeg = state.thumbnail(request.query_params.get("id", ""))
        if jpeg is None:
            return Response(status_code=404)
        return Response(
            jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=30"}
        )

    async def events(_request: Request) -> Response:
        try:
            client = broadcaster.connect()
        except TooManyClients as exc:
            return Response(
                f"{exc}; try again later\n", status_code=503, headers={"retry-after": "5"}
            )
        return StreamingResponse(
            broadcaster.stream(client),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, **state.summary()})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(broadcaster.run())
        try:
            yield
        finally:
            broadcaster.close()
            await task

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/camera", camera_page),
            Route("/api/cameras", cameras),
            Route("/api/camera", camera),
            Route("/api/thumbnail", thumbnail),
            Route("/api/events", events),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
    return ViewAuth(app, token)
