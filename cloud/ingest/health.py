"""``rpm-cloud ingest --health-port N``: ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics``.

``/readyz`` answers 200 only while every worker is subscribed and its writer alive, 503 otherwise
(starting, reconnecting, failed); ``/healthz`` answers 200 while the service is running and no
worker has failed. A failed worker also ends the service with a non-zero status, so a supervisor
that only watches the process restarts it too. ``/metrics`` is the Prometheus text exposition of the
registry given (:mod:`cloud.ingest.metrics`). Plain ``http.server`` in a daemon thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    def __init__(self, host: str, port: int, *, live: Callable[[], bool], ready: Callable[[], bool],
                 metrics: CollectorRegistry | None = None) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls it by this name
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and metrics is not None:
                    self._answer(200, generate_latest(metrics), CONTENT_TYPE_LATEST)
                    return
                check = checks.get(path)
                if check is None:
                    self._answer(404, b"not found\n")
                    return
                ok = bool(check())
                self._answer(200 if ok else 503, b"ok\n" if ok else b"unavailable\n")

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
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
