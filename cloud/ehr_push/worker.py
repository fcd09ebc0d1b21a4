"""``rpm-cloud ehr-push``: queue new readings, send them to the EHR as PHD transaction Bundles, record the answer.

The durability contract. A reading is queued (``ehr_push_outbox``) in the transaction that moves the watermark
past it, so it is queued once or not at all. A batch is built, stored with its Bundle and its readings marked
``batched`` in one transaction, before anything is sent; it is marked sent, with the server's answer, in one
transaction after the answer came. A worker killed between sending and marking leaves the batch unsent: when
its lease lapses another worker sends the same Bundle again, and every entry is a conditional create
(``ifNoneExist`` on the resource's identifier), so the server finds what the first send created and creates
nothing twice. Network errors, 408, 429 (after ``Retry-After``) and 5xx are tried again with jittered
exponential backoff, for as long as it takes; 401 gets one new token and one more try; any other 4xx parks the
batch with the server's OperationOutcome (``rpm-cloud ehr-push --status``), and nothing else waits behind it.
While a batch waits on its backoff no new batch is built: an EHR that is down gets one Bundle at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from cloud.api import fhir_queries
from cloud.api import queries as api_queries
from cloud.ehr_push import PushConfigError, TokenError, queries
from cloud.ehr_push.bundle import build_bundle, reading_group
from cloud.ehr_push.config import PushConfig, load_push_config
from cloud.ehr_push.smart import TokenSource, parse_retry_after
from cloud.settings import CloudSettings, get_settings

log = logging.getLogger(__name__)
BACKOFF_BASE_S = 1.0
RETRY_AFTER_MAX_S = 3600.0
"""The longest ``Retry-After`` honoured as given; a longer one is waited this long."""
CLAIM_PAGE = 2000
"""Readings the claimer looks at per statement (the watermark moves after each page)."""
FHIR_JSON = "application/fhir+json"


@dataclass
class PushReport:
    batches_sent: int = 0
    readings_sent: int = 0
    created: int = 0
    matched: int = 0
    batches_parked: int = 0
    withheld: int = 0
    retries: int = 0
    queued: int = 0
    waiting: int = 0
    """Batches still waiting on their backoff when a ``once`` run stopped."""


@dataclass(frozen=True)
class Attempt:
    """How one send ended: ``sent``, ``parked`` or ``retry`` (with the wait and the reason)."""

    result: str
    http_status: int | None = None
    detail: str = ""
    delay_s: float = 0.0
    created: int = 0
    matched: int = 0
    locations: dict[str, list[str]] | None = None


def outcome_text(response: httpx.Response) -> str:
    """What the server said, as one line: an OperationOutcome's issues, else the start of the body."""
    try:
        body: Any = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500] or '(no body)'}"
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        issues = body.get("issue")
        for issue in issues if isinstance(issues, list) else ():
            issue = _mapping(issue)
            text = _mapping(issue.get("details")).get("text") or issue.get("diagnostics") or ""
            places = issue.get("expression") or issue.get("location") or []
            where = ",".join(str(p) for p in places) if isinstance(places, list) else str(places)
            parts.append(
                f"{issue.get('severity', '?')} {issue.get('code', '?')}"
                + (f" at {where}" if where else "")
                + (f": {text}" if text else "")
            )
        return f"HTTP {response.status_code}: " + ("; ".join(parts) or "OperationOutcome without issues")
    return f"HTTP {response.status_code}: {json.dumps(body)[:500]}"


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` where it is a JSON object, else an empty one: a broken or hostile server's answer may put
    anything anywhere, and reading it must cost a retry or a parked batch, never the worker."""
    return value if isinstance(value, dict) else {}


class EhrPusher:
    """One worker: ``claim()`` new readings, ``push_one()`` batch, or ``run()`` both until stopped."""

    def __init__(
        self,
        settings: CloudSettings,
        config: PushConfig,
        *,
        name: str | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.backoff_base_s = backoff_base_s
        timeout = httpx.Timeout(config.timeout_s)
        self.http = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False, headers={"User-Agent": "rpm-cloud-ehr-push"}
        )
        self.tokens = TokenSource(config, self.http)
        self.all_writers_visible = True

    def close(self) -> None:
        self.http.close()

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=10)
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def check_care_teams(self, conn: psycopg.Connection) -> None:
        known = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM care_teams WHERE id = ANY(%s)", (list(self.config.care_teams),)
            ).fetchall()
        }
        unknown = [t for t in self.config.care_teams if t not in known]
        if unknown:
            raise PushConfigError(f"RPM_EHR_PUSH_CARE_TEAMS names no such care team: {', '.join(unknown)}")

    # --- queueing ---------------------------------------------------------------------------------------

    def claim(self, conn: psycopg.Connection, max_pages: int = 50) -> int:
        """Queue what is new past the watermark (a bounded number of pages per call): readings queued."""
        queued = 0
        for _ in range(max_pages):
            claimed, all_seen = queries.claim_new(conn, self.config.care_teams, CLAIM_PAGE, self.config.settle_s)
            if not all_seen and self.all_writers_visible:
                log.warning(
                    "EHR push: this database role cannot see when other sessions' transactions started"
                    " (grant it pg_read_all_stats): readings are queued %.0f s late",
                    queries.UNSEEN_XACT_LAG_S,
                )
            self.all_writers_visible = all_seen
            queued += claimed.queued
            if claimed.examined < CLAIM_PAGE:
                break
        return queued

    # --- batches ----------------------------------------------------------------------------------------

    def _new_batch(self, conn: psycopg.Connection, report: PushReport) -> queries.Batch | None:
        with conn.transaction():
            # No more readings than can fit: each needs an entry at least, so the entry cap bounds them too.
            pending = queries.lock_pending(conn, min(self.config.batch_size, self.config.max_entries))
            if not pending:
                return None
            allowed = queries.consenting(conn, sorted({p for _, p in pending}), self.config.care_teams)
            refused = [r for r, p in pending if p not in allowed]
            if refused:
                # Consent ended between queueing and now: these readings are never sent.
                queries.withhold(conn, refused)
                report.withheld += len(refused)
            ids = [r for r, p in pending if p in allowed]
            rows = queries.reading_rows(conn, ids)
            gone = set(ids) - {r["id"] for r in rows}
            if gone:
                # Deleted since they were queued (an operator's clean-up): nothing left to send.
                queries.withhold(conn, sorted(gone))
                report.withheld += len(gone)
            if not rows:
                return None
            patient_ids = sorted({r["patient_id"] for r in rows})
            patients = queries.patient_rows(conn, patient_ids)
            devices: dict[str, dict[str, Any]] = {}
            for patient_id in patient_ids:
                for device in api_queries.fhir_patient_devices(conn, patient_id):
                    owner = patient_id if device["current_patients"] == [patient_id] else None
                    devices.setdefault(device["uid"], {**device, "owner": owner})
            gateways = fhir_queries.gateway_statuses(conn, sorted({r["gateway_id"] for r in rows if r["gateway_id"]}))
            built = build_bundle([reading_group(r) for r in rows], patients, devices, gateways, self.config.max_entries)
            batch_id = queries.create_batch(
                conn, built.bundle, built.entry_readings, built.reading_ids, self.name, self.config.lease_s
            )
        log.info(
            "EHR push: batch %d built: %d readings, %d entries",
            batch_id,
            len(built.reading_ids),
            len(built.entry_readings),
        )
        return queries.Batch(
            batch_id, built.bundle, built.entry_readings, len(built.reading_ids), len(built.entry_readings), 0
        )

    def push_one(self, conn: psycopg.Connection, report: PushReport | None = None) -> str:
        """Send one batch (a due unsent one, else a new one): ``sent``, ``parked``, ``retry``, ``waiting`` (a
        batch waits on its backoff) or ``idle`` (nothing to send)."""
        report = report if report is not None else PushReport()
        batch = queries.claim_due_batch(conn, self.name, self.config.lease_s)
        if batch is None:
            if queries.seconds_until_retry(conn) is not None:
                return "waiting"
            batch = self._new_batch(conn, report)
            if batch is None:
                return "idle"
        attempt = self._send(batch)
        if attempt.result == "sent":
            if queries.record_sent(
                conn, batch.id, attempt.http_status or 200, attempt.created, attempt.matched, attempt.locations or {}
            ):
                report.batches_sent += 1
                report.readings_sent += batch.readings
                report.created += attempt.created
                report.matched += attempt.matched
                log.info(
                    "EHR push: batch %d sent (%d created, %d already there)", batch.id, attempt.created, attempt.matched
                )
        elif attempt.result == "parked":
            queries.record_parked(conn, batch.id, attempt.http_status or 0, attempt.detail)
            report.batches_parked += 1
            log.error("EHR push: batch %d parked: %s", batch.id, attempt.detail)
        else:
            queries.record_retry(conn, batch.id, self.name, attempt.detail, attempt.delay_s, attempt.http_status)
            report.retries += 1
            log.warning("EHR push: batch %d: %s; again in %.1f s", batch.id, attempt.detail, attempt.delay_s)
        return attempt.result

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.backoff_base_s * 2 ** min(attempts, 30))
        return ceiling * random.uniform(0.5, 1.0)  # jitter: workers retrying after one outage spread out

    def _post(self, bundle: dict[str, Any], token: str) -> httpx.Response:
        return self.http.post(
            self.config.fhir_url,
            content=json.dumps(bundle, separators=(",", ":")),
            headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        )

    def _send(self, batch: queries.Batch) -> Attempt:
        retry = self._backoff(batch.attempts)
        try:
            token = self.tokens.get()
            response = self._post(batch.bundle, token)
            if response.status_code == 401:
                # The token was revoked or expired early at the server: one new token, one more try.
                self.tokens.invalidate(token)
                response = self._post(batch.bundle, self.tokens.get())
        except TokenError as exc:
            delay = retry if exc.retry_after_s is None else min(exc.retry_after_s, RETRY_AFTER_MAX_S)
            return Attempt("retry", None, f"token: {exc}", delay)
        except httpx.TransportError as exc:
            return Attempt("retry", None, f"network: {type(exc).__name__}: {exc}", retry)
        status = response.status_code
        if 200 <= status < 300:
            return self._answer(batch, response, retry)
        if status == 429 or status == 408 or status >= 500:
            given = parse_retry_after(response.headers.get("retry-after"))
            delay = retry if given is None else min(given, RETRY_AFTER_MAX_S) * random.uniform(1.0, 1.1)
            return Attempt("retry", status, outcome_text(response), delay)
        if status == 401:
            return Attempt("retry", status, "refused with a new token too: " + outcome_text(response), retry)
        return Attempt("parked", status, outcome_text(response))

    def _answer(self, batch: queries.Batch, response: httpx.Response, retry: float) -> Attempt:
        """A 2xx: the transaction-response, one entry per entry sent, each 200 (found) or 201 (created)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        entries = body.get("entry") if isinstance(body, dict) and body.get("type") == "transaction-response" else None
        if not isinstance(entries, list) or len(entries) != batch.entries:
            # Committed or not, we cannot tell: sending again is safe, marking sent without an answer is not.
            return Attempt(
                "retry",
                response.status_code,
                f"the answer is not a transaction-response with one entry per entry sent ({batch.entries})",
                retry,
            )
        created = matched = 0
        locations: dict[str, list[str]] = {}
        for entry, reading_id in zip(entries, batch.entry_readings, strict=True):
            answer = _mapping(_mapping(entry).get("response"))
            code = str(answer.get("status", "")).split(" ")[0]
            if code == "201":
                created += 1
            elif code == "200":
                matched += 1
            else:
                return Attempt("retry", response.status_code, f"an entry answered {code or 'nothing'}", retry)
            if reading_id and answer.get("location"):
                locations.setdefault(reading_id, []).append(str(answer["location"]))
        return Attempt("sent", response.status_code, created=created, matched=matched, locations=locations)

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> PushReport:
        """Claim and push until ``stop`` is set; with ``once``, until nothing is left but batches waiting on
        their backoff (counted in ``waiting``) or parked. A lost database or an unexpected error is logged and
        the loop starts again after ``RPM_EHR_PUSH_POLL_S`` (``once`` raises it): the service never dies of one."""
        stop = stop or threading.Event()
        report = PushReport()
        while not stop.is_set():
            try:
                with self.connect() as conn:
                    self.check_care_teams(conn)
                    self._loop(conn, stop, once, report)
                    return report
            except PushConfigError:
                raise
            except Exception as exc:
                if once:
                    raise
                if isinstance(exc, psycopg.OperationalError):
                    log.warning("EHR push: lost the database (%s); trying again", exc)
                else:
                    log.exception("EHR push failed; starting again")
                stop.wait(self.config.poll_s)
        return report

    def _loop(self, conn: psycopg.Connection, stop: threading.Event, once: bool, report: PushReport) -> None:
        next_claim = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_claim:
                report.queued += self.claim(conn)
                next_claim = time.monotonic() + self.config.poll_s
            result = self.push_one(conn, report)
            if result in ("sent", "parked", "retry"):
                continue
            if once:
                if result == "waiting":
                    report.waiting = len(queries.unsent_batches(conn))
                return
            delay = queries.seconds_until_retry(conn) if result == "waiting" else None
            stop.wait(
                min(
                    self.config.poll_s,
                    self.config.poll_s if delay is None else delay,
                    max(0.05, next_claim - time.monotonic()),
                )
            )


def push_until_idle(settings: CloudSettings | None = None) -> PushReport:
    """Queue and send everything there is now (the demo's and tests' entry point); batches that must wait
    on a backoff are left for the next run."""
    settings = settings or get_settings()
    pusher = EhrPusher(settings, load_push_config(settings))
    try:
        return pusher.run(once=True)
    finally:
        pusher.close()


# --- the command -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="push what is there now, then exit")
    parser.add_argument("--status", action="store_true", help="show the outbox, unsent and parked batches")
    parser.add_argument(
        "--requeue",
        type=int,
        metavar="BATCH",
        help="send a parked batch's readings again (after the cause was fixed at the EHR)",
    )
    parser.add_argument(
        "--backfill", metavar="PATIENT", help="queue a consenting patient's readings stored before the push saw them"
    )


def _status(conn: psycopg.Connection) -> None:
    counts = queries.outbox_counts(conn)
    print("outbox: " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "empty"))
    for batch in queries.unsent_batches(conn):
        print(
            f"unsent batch {batch['id']}: {batch['readings']} readings, {batch['attempts']} attempts, next"
            f" {batch['next_attempt_at'].isoformat()}"
            + (f", last error: {batch['last_error']}" if batch["last_error"] else "")
        )
    for parked in queries.parked_batches(conn):
        print(
            f"parked batch {parked.id} ({parked.parked_at.isoformat()}): {parked.readings} readings: {parked.outcome}"
        )


def main(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        config = load_push_config(settings)
    except PushConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pusher = EhrPusher(settings, config)
    try:
        with pusher.connect() as conn:
            pusher.check_care_teams(conn)
            if args.status:
                _status(conn)
                return 0
            if args.requeue is not None:
                print(f"{queries.requeue_parked(conn, args.requeue)} readings of batch {args.requeue} queued again")
                return 0
            if args.backfill:
                print(f"{queries.backfill(conn, args.backfill, config.care_teams)} readings of {args.backfill} queued")
                return 0
        stop = threading.Event()
        _stop_on_signals(stop)
        report = pusher.run(stop, once=args.once)
        log.info("EHR push: %s", report)
        if args.once:
            print(json.dumps(report.__dict__))
            return 0 if not report.waiting and not report.batches_parked else 1
        return 0
    except PushConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        pusher.close()


def _stop_on_signals(stop: threading.Event) -> None:
    import signal

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
