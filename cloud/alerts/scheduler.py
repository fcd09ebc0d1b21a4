"""``rpm-cloud scheduler``: time-based alert rules (missing data), escalation and the delivery loop.

Missing data cannot be seen when a reading arrives: it is the reading that did not. The scheduler
asks, per ``missing_data`` rule, which patients are expected to send that kind (an active device
assignment) and how long ago their latest reading of it was measured; past the rule's ``hours`` it
opens an alert (once: an open alert is left alone), which the next reading of that kind resolves in
ingest. The adherence rule warns while the 16-days-of-30 rule for RPM billing can still be met, and
resolves itself when it no longer applies. Several schedulers may run: each patient is handled under
its twin row lock and deliveries are claimed with ``FOR UPDATE SKIP LOCKED``. Each delivery pass first
runs the escalation policies (:mod:`cloud.alerts.escalation`), whose steps are claimed the same way.
With ``RPM_RETENTION_DAYS`` set, a retention pass (:mod:`cloud.db.retention`) runs at start and then daily
(``--retention-every``) in a thread of its own.

``--metrics-port`` serves Prometheus metrics (:class:`SchedulerMetrics`): jobs run, alerts opened,
alert messages published, webhook attempts and failures, and how long each pass takes.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from cloud.alerts import queries
from cloud.alerts.delivery import Backoff, DeliveryReport, Publish, deliver_due, record_changes
from cloud.alerts.escalation import EscalationReport, run_escalations
from cloud.alerts.lifecycle import AlertBook
from cloud.db import alert_rules as rule_catalogue
from cloud.db.pool import failure_line
from cloud.db.retention import apply_retention, format_retention
from cloud.settings import get_settings
from cloud.twin import service as twin
from gateway.metrics import EXCLUDED_FLAGS
from gateway.mqtt.broker import BrokerAddress, MqttSetupError, TlsOptions

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


def retention_loop(database_url: str, retention_days: int, every_s: float, stop: threading.Event) -> None:
    """A retention pass (:mod:`cloud.db.retention`) now and every ``every_s`` seconds until ``stop``, on a
    connection of its own and off the delivery loop: a long pass must not hold up alert messages. Several
    schedulers may run it; the pass's advisory lock lets one through and the others skip."""
    while not stop.is_set():
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                log.info("%s", format_retention(apply_retention(conn, retention_days)).replace("\n", ";"))
        except psycopg.Error as err:
            # The next pass retries; the data it did not remove is still before the horizon then.
            log.warning("retention pass failed: %s", failure_line(err) if isinstance(err, psycopg.OperationalError)
                        else f"{type(err).__name__}: {err}")
        stop.wait(every_s)


def mqtt_publisher(url: str, username: str | None, password: str | None,
                   timeout_s: float = 10.0, *, tls: TlsOptions | None = None) -> tuple[Any, Publish]:
    """A connected paho client and a ``publish(topic, payload) -> acked`` function (QoS 1).
    ``tls``: default, the settings' (``RPM_MQTT_CA_FILE`` ...)."""
    from gateway.mqtt.client import MQTT_V311, ClientOptions, connect, create_client

    address = BrokerAddress.parse(url)
    options = ClientOptions(client_id=f"rpm-scheduler-{threading.get_ident()}", protocol=MQTT_V311,
                            username=username, password=password,
                            tls=get_settings().mqtt_tls() if tls is None else tls)
    client = create_client(address, options)
    connect(client, address, options)
    client.loop_start()

    def publish(topic: str, payload: bytes) -> bool:
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    return client, publish


class SchedulerMetrics:
    """The scheduler's Prometheus metrics, in a registry of its own; recorded once per pass."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("rpm_scheduler_runs", "Scheduler jobs run", ["job"], registry=self.registry)
        self.alerts_opened = Counter("rpm_scheduler_alerts_opened", "Missing-data and adherence alerts opened",
                                     registry=self.registry)
        self.alerts_published = Counter("rpm_scheduler_alerts_published", "Alert messages published over MQTT"
                                        " and acknowledged by the broker", registry=self.registry)
        self.mqtt_failures = Counter("rpm_scheduler_mqtt_failures", "Alert messages the broker did not acknowledge",
                                     registry=self.registry)
        self.webhook_attempts = Counter("rpm_scheduler_webhook_attempts", "Webhook deliveries attempted",
                                        registry=self.registry)
        self.webhook_failures = Counter("rpm_scheduler_webhook_failures", "Webhook attempts that failed (retried"
                                        " later, or given up)", registry=self.registry)
        self.delivery_attempts = Counter("rpm_scheduler_delivery_attempts", "Delivery attempts by channel (email,"
                                         " provider, webhook, mqtt)", ["channel"], registry=self.registry)
        self.delivery_failures = Counter("rpm_scheduler_delivery_failures", "Failed delivery attempts by channel",
                                         ["channel"], registry=self.registry)
        self.deliveries_given_up = Counter("rpm_scheduler_deliveries_given_up", "Deliveries abandoned after their"
                                           " last attempt", registry=self.registry)
        self.escalation_steps = Counter("rpm_scheduler_escalation_steps", "Escalation steps sent (policy steps"
                                        " and repeats)", registry=self.registry)
        self.escalation_messages = Counter("rpm_scheduler_escalation_messages", "Messages queued by escalation"
                                           " steps and patient notifications", registry=self.registry)
        self.escalations = Counter("rpm_scheduler_escalations", "Escalations started and stopped", ["event"],
                                   registry=self.registry)
        self.loop_seconds = Histogram("rpm_scheduler_loop_seconds", "Time of one pass (checks, then deliveries)",
                                      registry=self.registry)
        self._published = self._unacked = 0

    def counting(self, publish: Publish | None) -> Publish | None:
        """``publish``, counting what the broker acknowledges (the rest of a pass's attempts are webhooks)."""
        if publish is None:
            return None

        def counted(topic: str, payload: bytes) -> bool:
            acked = publish(topic, payload)
            if acked:
                self._published += 1
            else:
                self._unacked += 1
            return acked

        return counted

    def record_escalation(self, report: EscalationReport) -> None:
        self.escalations.labels("started").inc(report.started)
        self.escalations.labels("stopped").inc(report.stopped)
        self.escalation_steps.inc(report.steps)
        self.escalation_messages.inc(report.messages + report.patient_messages)

    def record(self, checked: bool, opened: int, report: DeliveryReport, seconds: float) -> None:
        published, unacked, self._published, self._unacked = self._published, self._unacked, 0, 0
        if checked:
            self.runs.labels("missing_data").inc()
            self.runs.labels("adherence").inc()
        self.runs.labels("delivery").inc()
        self.alerts_opened.inc(opened)
        self.alerts_published.inc(published)
        self.mqtt_failures.inc(unacked)
        self.webhook_attempts.inc(report.attempts_by_channel.get("webhook", 0))
        self.webhook_failures.inc(report.failures_by_channel.get("webhook", 0))
        for channel, attempts in report.attempts_by_channel.items():
            self.delivery_attempts.labels(channel).inc(attempts)
        for channel, failures in report.failures_by_channel.items():
            self.delivery_failures.labels(channel).inc(failures)
        self.deliveries_given_up.inc(report.failed)
        self.loop_seconds.observe(seconds)


def run_once(conn: Any, http: httpx.Client, publish: Publish | None, backoff: Backoff,
             check_missing: bool, metrics: SchedulerMetrics | None = None) -> tuple[int, DeliveryReport]:
    started = time.perf_counter()
    if metrics is not None:
        publish = metrics.counting(publish)
    opened = 0
    if check_missing:
        opened = evaluate_missing_data(conn) + evaluate_adherence(conn)[0]
    # Before sending: a step queued now goes out in this pass, and a stopped chain's messages are cancelled.
    try:
        escalated = run_escalations(conn)
    except Exception:
        # Escalation must not hold up the outbox: what is queued (webhooks, MQTT, e-mail) still goes out.
        log.exception("escalation pass failed; delivering what is queued")
        escalated = EscalationReport(errors=["escalation pass failed"])
    if escalated.busy:
        log.info("escalation: started %d, steps %d, messages %d (patients %d), held %d, fell back %d, stopped %d%s",
                 escalated.started, escalated.steps, escalated.messages, escalated.patient_messages, escalated.held,
                 escalated.fell_back, escalated.stopped, f"; errors: {escalated.errors}" if escalated.errors else "")
    if metrics is not None:
        metrics.record_escalation(escalated)
    report = deliver_due(conn, http=http, publish=publish, backoff=backoff)
    if metrics is not None:
        metrics.record(check_missing, opened, report, time.perf_counter() - started)
    return opened, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")
    parser.add_argument("--mqtt-url", default=None, help="default: RPM_MQTT_URL")
    parser.add_argument("--no-mqtt", action="store_true", help="deliver webhooks only")
    parser.add_argument("--missing-every", type=float, default=300.0,
                        help="seconds between missing-data and adherence checks")
    parser.add_argument("--deliver-every", type=float, default=1.0, help="seconds between delivery passes")
    parser.add_argument("--once", action="store_true", help="one missing-data check and one delivery pass, then exit")
    parser.add_argument("--retention-every", type=float, default=86400.0,
                        help="seconds between retention passes (RPM_RETENTION_DAYS; none when it is unset)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics on this port (default: none)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address of the metrics endpoint (default 127.0.0.1; 0.0.0.0 for a cluster scrape)")


def main(args: argparse.Namespace) -> int:
    settings = get_settings()
    client = publish = None
    metrics = SchedulerMetrics()
    if args.metrics_port is not None:
        try:
            start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
        except OSError as err:
            print(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {err}")
            return 2
        log.info("metrics: http://%s:%d/metrics", args.metrics_host, args.metrics_port)
    try:
        conn = psycopg.connect(args.database_url or settings.database_url, autocommit=True)
    except psycopg.OperationalError as err:
        print(f"error: {failure_line(err)}")
        return 2
    if not args.no_mqtt:
        try:
            client, publish = mqtt_publisher(args.mqtt_url or settings.mqtt_url, settings.mqtt_username,
                                             settings.mqtt_password, tls=settings.mqtt_tls())
        except MqttSetupError as err:
            print(f"error: MQTT: {err}")
            return 2
        except OSError as err:
            print(f"error: cannot reach the MQTT broker: {err}")
            return 2
    backoff = Backoff()
    next_missing = 0.0
    stop_retention = threading.Event()
    if settings.retention_days is not None and not args.once:
        threading.Thread(target=retention_loop, name="retention", daemon=True,
                         args=(args.database_url or settings.database_url, settings.retention_days,
                               args.retention_every, stop_retention)).start()
    try:
        with conn, httpx.Client(timeout=settings.webhook_timeout_s) as http:
            while True:
                check = time.monotonic() >= next_missing
                if check:
                    next_missing = time.monotonic() + args.missing_every
                opened, report = run_once(conn, http, publish, backoff, check, metrics)
                if opened or report.delivered or report.retrying or report.failed:
                    log.info("missing-data alerts opened %d; delivered %d, retrying %d, gave up %d",
                             opened, report.delivered, report.retrying, report.failed)
                if args.once:
                    return 0
                time.sleep(args.deliver_every)  # a polling period, not synchronisation
    except KeyboardInterrupt:
        return 0
    finally:
        stop_retention.set()
        if client is not None:
            client.loop_stop()
            client.disconnect()
