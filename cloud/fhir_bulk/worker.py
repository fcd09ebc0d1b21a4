"""The export worker: threads in the API process that claim jobs from ``bulk_export_jobs`` and run them.

Why in the API process and not in ``rpm-cloud scheduler``: the API serves the files, so whoever writes
them must write where the API reads (``RPM_BULK_EXPORT_DIR``); a worker beside the API needs no shared
volume between two services and no second deployment to run. Jobs are claimed with ``FOR UPDATE SKIP
LOCKED`` under a lease, so several API processes (``--workers``, replicas on a shared volume) split them
and a dead one's job is taken again when its lease lapses. The export is blocking I/O (a server-side
cursor, file writes), so it runs on threads of its own, never on the event loop or the request threads.

On shutdown a running job is given back (queued again) for the next start; a worker killed outright
leaves it running until its lease lapses, then the next claim starts it again or, past
``RPM_BULK_EXPORT_MAX_ATTEMPTS``, fails it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI

from cloud.fhir_bulk import ExportStopped, JobLost, export, queries
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)
IDLE_POLL_S = 2.0
"""How often an idle worker looks for a job another process queued (a kick-off here wakes it at once)."""
CLEANUP_EVERY_S = 60.0


class ExportWorkers:
    """``start()`` / ``stop()`` the worker threads of one process; ``wake()`` after a kick-off."""

    def __init__(self, settings: CloudSettings, threads: int | None = None) -> None:
        self.settings = settings
        self._count = settings.bulk_export_workers if threads is None else threads
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=10)
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def start(self) -> None:
        for index in range(self._count):
            thread = threading.Thread(target=self._run, args=(f"{self._name}/{index}",), daemon=True,
                                      name=f"bulk-export-{index}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait(seconds)

    def _run(self, worker: str) -> None:
        next_cleanup = 0.0
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    while not self._stop.is_set():
                        now = time.monotonic()
                        if now >= next_cleanup:
                            self.clean_up(conn)
                            next_cleanup = now + CLEANUP_EVERY_S
                        if not self.run_one(conn, worker):
                            self._sleep(IDLE_POLL_S)
            except psycopg.OperationalError as exc:
                # The database went away: the job (if any) keeps its lease until it lapses; try again soon.
                log.warning("bulk export worker %s lost the database: %s", worker, exc)
                self._stop.wait(IDLE_POLL_S)
            except Exception:
                log.exception("bulk export worker %s failed; restarting it", worker)
                self._stop.wait(IDLE_POLL_S)

    def clean_up(self, conn: psycopg.Connection) -> None:
        """Expire finished jobs past their time, delete their files; fail jobs restarted too often."""
        for job_id in queries.fail_exhausted(conn, self.settings.bulk_export_max_attempts):
            log.warning("bulk export %s failed: interrupted too often", job_id)
        for directory in queries.expire_jobs(conn):
            export.remove_directory(directory)

    def run_one(self, conn: psycopg.Connection, worker: str) -> bool:
        """Claim and run one job; False when there was none."""
        queries.fail_exhausted(conn, self.settings.bulk_export_max_attempts)
        job = queries.claim_job(conn, worker, self.settings.bulk_export_lease_s,
                                self.settings.bulk_export_max_attempts)
        if job is None:
            return False
        log.info("bulk export %s: attempt %d by %s", job.id, job.attempts, worker)
        try:
            export.run_job(self._connect, job, worker, lease_s=self.settings.bulk_export_lease_s,
                           ttl_s=self.settings.bulk_export_ttl_s, stop=self._stop)
            log.info("bulk export %s complete", job.id)
        except ExportStopped:
            # Shutting down: queued again at once, for the next start (its folder is emptied then).
            queries.release_job(conn, job.id, worker)
            log.info("bulk export %s given back on shutdown", job.id)
        except JobLost as exc:
            log.info("bulk export %s stopped: %s", job.id, exc)
            now = queries.get_job(conn, job.id)
            # Cancelled: its files go. Taken over (this worker stalled past its lease): the folder is the new
            # worker's now, and stays.
            if now is None or now.state != "running":
                export.remove_directory(job.directory)
        except psycopg.OperationalError:
            raise  # the database is gone: the lease lapses and a later claim runs the job again
        except Exception as exc:
            log.exception("bulk export %s failed", job.id)
            # The owner is told the kind of error, not its text (paths, SQL): that is in the log.
            reason = f"an internal error ({type(exc).__name__}); see the server log"
            if queries.mark_failed(conn, job.id, worker, reason):
                export.remove_directory(job.directory)
        return True


@asynccontextmanager
async def export_workers(app: FastAPI) -> AsyncIterator[None]:
    """The API's lifespan part (``cloud/api/routes/fhir_bulk.py``): the workers run while the app does."""
    workers = ExportWorkers(app.state.settings)
    app.state.bulk_export_workers = workers
    workers.start()
    try:
        yield
    finally:
        workers.stop()
