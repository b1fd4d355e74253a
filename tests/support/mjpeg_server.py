"""A live MJPEG-over-HTTP camera stand-in: multipart/x-mixed-replace, many clients.

``MjpegServer(fps=20).start()`` serves a moving synthetic pattern at
``http://127.0.0.1:PORT/stream`` from a thread of the test process; ``stop()`` closes
the listener and every client connection.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from camstream.imaging import encode_jpeg
from producers.sources import SyntheticSource

BOUNDARY = "camstreamframe"


class MjpegServer:
    def __init__(self, fps: float = 20.0, width: int = 640, height: int = 360) -> None:
        self.fps = fps
        self._source = SyntheticSource(width, height)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/stream":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                period = 1.0 / server.fps
                next_due = time.monotonic()
                try:
                    while not server._stopping.is_set():
                        jpeg = server._frame()
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg
                            + b"\r\n"
                        )
                        next_due += period
                        server._stopping.wait(max(next_due - time.monotonic(), 0))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _frame(self) -> bytes:
        with self._lock:
            return encode_jpeg(self._source.read(), 80)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/stream"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
