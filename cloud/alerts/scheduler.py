"""``rpm-cloud scheduler``: time-based alert rules (missing data) and the delivery loop (webhooks, MQTT).

Missing data cannot be seen when a reading arrives: it is the reading that did not. The scheduler
asks, per ``missing_data`` rule, which patients are expected to send that kind (an active device
assignment) and how long ago their latest reading of it was measured; past the rule's ``hours`` it
opens an alert (once: an open alert is left alone), which the next reading of that kind resolves in
ingest. The adherence rule warns while the 16-days-of-30 rule for RPM billing can still be met, and
resolves itself when it no longer applies. Several schedulers may run: each patient is handled under
its twin row lock and deliveries are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from cloud.alerts import queries
from cloud.alerts import rules as rule_catalogue
from cloud.alerts.delivery import Backoff, DeliveryReport, Publish, deliver_due, record_changes
from cloud.alerts.lifecycle import AlertBook
from cloud.settings import get_settings
from cloud.twin import service as twin
from cloud.twin.state import EXCLUDED_FLAGS

log = logging.getLogger(__name__)


def evaluate_missing_data(conn: Any, now: datetime | None = None) -> int:
    """Open missing-data alerts that are due as of ``now``; return how many were opened.

    ``conn``: an autocommit connection (each patient is its own transaction) or one inside a
    transaction the caller commits. MQTT and webhook messages go to the delivery outbox.
    """
    now = now or datetime.now(UTC)
    opened = 0
    for rule in rule_catalogue.catalogue(conn).values():
        if rule.rule_type != "missing_data":
            continue
        profiles = list(rule.params.get("profiles", []))
        for candidate in queries.missing_data_candidates(conn, rule.reading_kind, profiles, now):
            patient_id = candidate["patient_id"]
            with conn.transaction():
                twin.lock(conn, [patient_id])
                in_force = next(r for r in rule_catalogue.effective_rules(conn, patient_id) if r.id == rule.id)
                if not in_force.enabled:
                    continue
                hours = float(in_force.params.get("hours", 48))
                since = candidate["last_at"] or candidate["assigned_at"]
                gap = now - since
                if gap < timedelta(hours=hours):
                    continue
                book = AlertBook(conn, [patient_id], now)
                if (patient_id, rule.id) in book.open:
                    continue
                what = rule.reading_kind.replace("_", " ")
                message = (f"{in_force.description}: no {what} reading for {gap.total_seconds() / 3600:.0f} h"
                           + (f" (last measured {candidate['last_at'].isoformat()})" if candidate["last_at"]
                              else " (none since the device was assigned)"))
                book.trigger(in_force, patient_id, message=message, metric=None,
                             value=round(gap.total_seconds() / 3600, 1), reading_id=None,
                             measured_at=candidate["last_at"], late=False, flags=[])
                record_changes(conn, book.changes, now, mqtt_via_outbox=True)
                opened += 1
    return opened


def adherence_status(enrolled_at: datetime, reading_days: list[date], now: datetime, *, period_days: int = 30,
                     required_days: int = 16, buffer_days: int = 3) -> tuple[bool, str]:
    """Whether the patient is at risk of missing ``required_days`` in the current period, and why.

    Periods of ``period_days`` run from the enrolment day. At risk: the days with readings so far plus
    every day left (today included while it has no reading) fall short of ``required_days`` plus a
    ``buffer_days`` margin, so the warning comes while the period can still be saved.
    """
    today = now.astimezone(UTC).date()
    enrolled = enrolled_at.astimezone(UTC).date()
    elapsed = max(0, (today - enrolled).days)
    period_start = enrolled + timedelta(days=period_days * (elapsed // period_days))
    day_index = (today - period_start).days
    done = sorted(d for d in reading_days if period_start <= d <= today)
    left = period_days - day_index - 1 + (0 if today in done else 1)
    at_risk = len(done) + left < required_days + buffer_days
    why = (f"readings on {len(done)} of the {day_index + 1} days so far of the {period_days}-day period"
           f" from {period_start.isoformat()}; {required_days} needed, at most {len(done) + left} still possible")
    return at_risk, why


def evaluate_adherence(conn: Any, now: datetime | None = None) -> tuple[int, int]:
    """Open adherence alerts for patients at risk of missing the 16-day rule, resolve those no longer
    at risk (a new period, or readings came in); return (opened, resolved)."""
    now = now or datetime.now(UTC)
    opened = resolved = 0
    rules = [r for r in rule_catalogue.catalogue(conn).values() if r.rule_type == "adherence"]
    if not rules:
        return 0, 0
    for candidate in queries.adherence_candidates(conn, now, sorted(EXCLUDED_FLAGS)):
        patient_id = candidate["patient_id"]
        for rule in rules:
            with conn.transaction():
                twin.lock(conn, [patient_id])
                in_force = next(r for r in rule_catalogue.effective_rules(conn, patient_id) if r.id == rule.id)
                book = AlertBook(conn, [patient_id], now)
                alert = book.open.get((patient_id, rule.id))
                at_risk, why = adherence_status(
                    candidate["enrolled_at"], candidate["days"], now,
                    period_days=int(in_force.params.get("period_days", 30)),
                    required_days=int(in_force.params.get("required_days", 16)),
                    buffer_days=int(in_force.params.get("buffer_days", 3)),
                )
                if in_force.enabled and at_risk and alert is None:
                    book.trigger(in_force, patient_id, message=f"{in_force.description}: {why}", metric=None,
                                 value=None, reading_id=None, measured_at=None,
                                 late=False, flags=[])
                    opened += 1
                elif alert is not None and (not at_risk or not in_force.enabled):
                    book.resolve(alert, "system", detail={"why": why})
                    resolved += 1
                record_changes(conn, book.changes, now, mqtt_via_outbox=True)
    return opened, resolved


def mqtt_publisher(url: str, username: str | None, password: str | None,
                   timeout_s: float = 10.0) -> tuple[Any, Publish]:
    """A connected paho client and a ``publish(topic, payload) -> acked`` function (QoS 1)."""
    import paho.mqtt.client as mqtt

    parts = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rpm-scheduler-{threading.get_ident()}")
    if username:
        client.username_pw_set(username, password)
    if parts.scheme in ("mqtts", "ssl"):
        settings = get_settings()
        client.tls_set(ca_certs=settings.mqtt_ca_file, certfile=settings.mqtt_cert_file,
                       keyfile=settings.mqtt_key_file)
    client.connect(parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883))
    client.loop_start()

    def publish(topic: str, payload: bytes) -> bool:
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    return client, publish


def run_once(conn: Any, http: httpx.Client, publish: Publish | None, backoff: Backoff,
             check_missing: bool) -> tuple[int, DeliveryReport]:
    opened = 0
    if check_missing:
        opened = evaluate_missing_data(conn) + evaluate_adherence(conn)[0]
    report = deliver_due(conn, http=http, publish=publish, backoff=backoff)
    return opened, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")
    parser.add_argument("--mqtt-url", default=None, help="default: RPM_MQTT_URL")
    parser.add_argument("--no-mqtt", action="store_true", help="deliver webhooks only")
    parser.add_argument("--missing-every", type=float, default=300.0,
                        help="seconds between missing-data and adherence checks")
    parser.add_argument("--deliver-every", type=float, default=1.0, help="seconds between delivery passes")
    parser.add_argument("--once", action="store_true", help="one missing-data check and one delivery pass, then exit")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    client = publish = None
    try:
        conn = psycopg.connect(args.database_url or settings.database_url, autocommit=True)
    except psycopg.OperationalError as err:
        print(f"error: cannot reach the database: {str(err).strip().splitlines()[0]}")
        return 2
    if not args.no_mqtt:
        try:
            client, publish = mqtt_publisher(args.mqtt_url or settings.mqtt_url, settings.mqtt_username,
                                             settings.mqtt_password)
        except OSError as err:
            print(f"error: cannot reach the MQTT broker: {err}")
            return 2
    backoff = Backoff()
    next_missing = 0.0
    try:
        with conn, httpx.Client(timeout=settings.webhook_timeout_s) as http:
            while True:
                check = time.monotonic() >= next_missing
                if check:
                    next_missing = time.monotonic() + args.missing_every
                opened, report = run_once(conn, http, publish, backoff, check)
                if opened or report.delivered or report.retrying or report.failed:
                    log.info("missing-data alerts opened %d; delivered %d, retrying %d, gave up %d",
                             opened, report.delivered, report.retrying, report.failed)
                if args.once:
                    return 0
                time.sleep(args.deliver_every)  # a polling period, not synchronisation
    except KeyboardInterrupt:
        return 0
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
