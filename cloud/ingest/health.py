"""``rpm-cloud ingest --health-port N``: ``/healthz`` (liveness) and ``/readyz`` (readiness) over HTTP.

``/readyz`` answers 200 only while every worker is subscribed and its writer alive, 503 otherwise
(starting, reconnecting, failed); ``/healthz`` answers 200 while the service is running and no
worker has failed. A failed worker also ends the service with a non-zero status, so a supervisor
that only watches the process restarts it too. Plain ``http.server`` in a daemon thread: two
callables and no dependencies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HealthServer:
    def __init__(self, host: str, port: int, *, live: Callable[[], bool], ready: Callable[[], bool]) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls it by this name
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self._answer(404, b"not found\n")
                    return
                ok = bool(check())
                self._answer(200 if ok else 503, b"ok\n" if ok else b"unavailable\n")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes come every few seconds: not logged
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingest-health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
