"""A real HTTP server on 127.0.0.1 for tests that speak a protocol (OpenAI-compatible judges and their failures)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHTTPServer:
    """Serves ``handler`` on a free port of 127.0.0.1 in a daemon thread until :meth:`close`.

    Subclasses build their handler class in ``_handler`` (it may read the server's state through a closure) and
    keep their own state; this class owns only the server's lifecycle and its ``/v1`` base URL.
    """

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
