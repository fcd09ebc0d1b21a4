"""``rpm-demo``: the whole system on one machine, with a story to watch.

Embedded PostgreSQL (the ``pgserver`` wheel) and an in-process MQTT broker (``amqtt``) — or the
services ``RPM_DATABASE_URL`` / ``RPM_MQTT_URL`` name — then migrations, ``rpm-cloud ingest``,
``rpm-cloud scheduler``, ``rpm-cloud api`` and ``rpm-gateway run`` as child processes, and simulated
devices on both transports: BLE through the bleak simulator backend inside the gateway process, USB
through pseudo-terminals the gateway opens like real ports. A compressed week plays out; then the API
stays up (with sign-in links for the clinician and a patient, and a clinician token printed) until
Ctrl-C, or ``--duration`` ends the run with one JSON summary line.

This module orchestrates whole processes; the cloud services it starts import nothing of the gateway
but its contract, and the gateway runs as its own process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import warnings
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cloud.api.patient_queries import name_member
from cloud.db.migrate import apply_migrations
from cloud.demo import queries, story
from cloud.demo.devices import DemoWorld
from cloud.demo.oidc import DevOpenIdProvider, DevUser
from cloud.demo.services import Children, dev_key, gateway_config, reset, start_backing_services
from cloud.demo.view import Snapshot, render
from cloud.embedded import free_port
from cloud.errors import CloudError
from cloud.logging_setup import configure_logging
from cloud.settings import CloudSettings

log = logging.getLogger("rpm-demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpm-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"),
                        help="where the database, gateway outbox and logs go (default ./demo-data)")
    parser.add_argument("--reset", action="store_true", help="delete the data directory first")
    parser.add_argument("--duration", type=float, default=None,
                        help="run S seconds in all, print a JSON summary line and exit")
    parser.add_argument("--week-seconds", type=float, default=None,
                        help="how long the simulated week takes (default 35 s, shorter with --duration)")
    parser.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt",
                        help="embedded broker: in-process amqtt (MQTT 3.1.1) or a private mosquitto (v5)")
    parser.add_argument("--api-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--plain", action="store_true", help="no live view: log lines only")
    return parser


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


class DemoStop(CloudError):
    """Ctrl-C or SIGTERM: stop everything the demo started, once, whatever it was doing."""


def _stop_on_signals() -> None:
    def handler(signum: int, frame: Any) -> None:
        # Later signals must not interrupt the orderly stop of the children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise DemoStop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _stop_on_signals()
    configure_logging("demo", default_level="WARNING")
    # The in-process broker logs every refused MQTT v5 CONNECT (the clients then fall back to 3.1.1).
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="platformdirs")
    started = time.monotonic()
    week_seconds = args.week_seconds or (min(35.0, args.duration * 0.5) if args.duration else 35.0)
    data_dir: Path = args.data_dir.resolve()
    if args.reset:
        reset(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    run_started = datetime.now(UTC)
    out = sys.stderr if args.duration else sys.stdout

    try:
        return _run(args, started, week_seconds, data_dir, run_started, out)
    except DemoStop as stop:
        print(f"\nrpm-demo: {stop}: stopped the services and the gateway", file=out)
        return 0


def _run(args: argparse.Namespace, started: float, week_seconds: float, data_dir: Path, run_started: datetime,
         out: Any) -> int:
    with ExitStack() as stack:
        print(f"rpm-demo: data in {data_dir}", file=out)
        endpoints = start_backing_services(stack, data_dir, args.broker)
        print("  " + endpoints.lines().replace("\n", "\n  "), file=out)
        apply_migrations(endpoints.database_url)
        world = DemoWorld(data_dir, datetime.now())
        stack.callback(world.close)
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            queries.seed(conn, story.devices(), since=world.first_day_utc)
            name_member(conn, story.CARE_TEAM[0], story.CLINICIAN, "Dr Demo")  # what the patient reads in "who looked"

        api_port = args.api_port or free_port()
        api = f"http://127.0.0.1:{api_port}"
        # Sign-in for the page: the development OpenID provider, signing the demo clinician in without a form.
        clinician = DevUser(story.CLINICIAN, role="clinician", care_teams=(story.CARE_TEAM[0],), name="Dr Demo")
        # The patient's page (/ui/me) signs Ana in: her sign-in link names her, the page itself sends no hint.
        ana = story.PATIENTS[0]
        patient = DevUser(ana.id, role="patient", patient=ana.id, name=ana.name)
        provider = stack.enter_context(DevOpenIdProvider([clinician, patient], audience=CloudSettings().jwt_audience,
                                                         redirect_uris=(f"{api}/ui", f"{api}/ui/me")))
        env = {"RPM_DATABASE_URL": endpoints.database_url, "RPM_MQTT_URL": endpoints.mqtt_url,
               "RPM_JWT_DEV_KEY": dev_key(data_dir), "RPM_OIDC_ISSUER": provider.issuer,
               # First-time links (a patient without an account) beside the provider's sign-in.
               "RPM_FIRST_TIME_KEY": dev_key(data_dir, "first_time_key")}
        children = Children(data_dir / "logs", env)
        stack.callback(children.stop)
        children.start("ingest", "rpm-cloud", "ingest", "--workers", "1")
        children.start("scheduler", "rpm-cloud", "scheduler", "--missing-every", "30", "--deliver-every", "2")
        children.start("api", "rpm-cloud", "api", "--port", str(api_port))
        config = gateway_config(data_dir, endpoints.mqtt_url, world.ble_addresses(), world.usb_ports())
        children.start("gateway", "rpm-gateway", "run", "--config", str(config),
                       extra_env={"RPM_SIM_BLE_SCENARIO": str(world.scenario_path)})
        if not _wait_http(f"{api}/healthz", 60):
            print(f"error: the API did not come up; see {data_dir / 'logs' / 'api.log'}", file=sys.stderr)
            return 1
        # With an issuer set the API verifies the provider's keys only, so curl gets a token the provider signed.
        token = provider.access_token(clinician, ttl_s=12 * 3600)
        header = (f"{endpoints.lines()}\n"
                  f"API:      {api}   (docs {api}/docs, page {api}/ui)\nsign-in:  {provider.issuer} (development)\n"
                  f"logs:     {data_dir / 'logs'}")
        runner = Runner(world, endpoints.database_url, run_started, children, header, plain=args.plain or bool(
            args.duration) or not sys.stdout.isatty())
        try:
            runner.play_week(week_seconds)
            runner.wait_drained(timeout=max(20.0, (args.duration or 120) - (time.monotonic() - started) - 5))
            runner.close_view()
            summary = runner.summary()
            if args.duration:
                remaining = args.duration - (time.monotonic() - started)
                if remaining > 0:
                    runner.idle(remaining)
                summary = runner.summary()
                summary.update(api=api, data_dir=str(data_dir))
                print(json.dumps(summary))
                return 0 if summary["lost"] == 0 else 1
            print(f"\nThe week is done: {json.dumps(summary)}\n"
                  f"API:        {api}\nOpenAPI:    {api}/docs\n"
                  f"Clinician page: {api}/ui   (signs you in as {story.CLINICIAN} through the demo's OpenID "
                  f"provider, {provider.issuer})\n"
                  f"Patient page:   {provider.login_url(patient.sub, f'{api}/ui/me')}\n"
                  f"                (signs you in as {ana.name}, {ana.id}: her readings in words, who sees them)\n"
                  f"Clinician token for curl (care team {story.CARE_TEAM[0]}, 12 h):\n{token}\n\n"
                  f"Try: curl -H 'Authorization: Bearer <token>' {api}/v1/patients\nCtrl-C to stop.")
            runner.idle(None)
            return 0
        finally:
            runner.close_view()


class Runner:
    """Plays the week into the simulated devices and shows what the system makes of it."""

    def __init__(self, world: DemoWorld, database_url: str, since: datetime, children: Children, header: str,
                 *, plain: bool) -> None:
        self.world = world
        self.database_url = database_url
        self.since = since
        self.children = children
        self.header = header
        self.plain = plain
        self.day = 0
        self.live: Any = None

    def snapshot(self) -> Snapshot:
        delivered = self.world.delivered()
        earliest = min((t for times in delivered.values() for t in times), default=None)
        devices = story.devices()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            held = ({} if earliest is None else
                    queries.device_times_stored(conn, [(d.uid, d.user_index) for d in devices], earliest))
            alerts = queries.alerts_since(conn, self.since)
            dead = queries.dead_letters_since(conn, self.since)
        stored = {d.key: len(delivered[d.key] & held.get((d.uid, d.user_index), set())) for d in devices}
        lines = [f"[red]{name} exited with {code}: see logs[/]" for name, code in self.children.dead().items()]
        return Snapshot(self.day, story.DAYS, self.world.sent(), stored, alerts, dead, lines)

    def _show(self, seconds: float | None, until: Any = None) -> None:
        """Refresh the live view (one for the whole run) for ``seconds``, or until ``until()`` holds."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            if not self.plain:
                if self.live is None:
                    from rich.live import Live

                    self.live = Live(refresh_per_second=4, vertical_overflow="visible")
                    self.live.start()
                self.live.update(render(self.snapshot(), story.devices(), self.header))
            if until is not None and until():
                return
            time.sleep(0.25)

    def close_view(self) -> None:
        if self.live is not None:
            self.live.update(render(self.snapshot(), story.devices(), self.header))
            self.live.stop()
            self.live = None

    def play_week(self, week_seconds: float) -> None:
        per_day = week_seconds / story.DAYS
        for day in range(story.DAYS):
            self.world.deliver_day(day)
            self.day = day + 1
            if self.plain:
                print(f"day {self.day}/{story.DAYS}: devices sent {sum(self.world.sent().values())} readings so far",
                      file=sys.stderr)
            self._show(per_day)

    def wait_drained(self, timeout: float) -> None:
        def drained() -> bool:
            snapshot = self.snapshot()
            return all(snapshot.stored.get(k, 0) >= n for k, n in snapshot.sent.items())

        self._show(timeout, until=drained)

    def idle(self, seconds: float | None) -> None:
        """Keep the system up: quietly, or with the live view while it is still open."""
        if self.live is None:
            deadline = None if seconds is None else time.monotonic() + seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
            return
        self._show(seconds)

    def summary(self) -> dict[str, Any]:
        snapshot = self.snapshot()
        sent = sum(snapshot.sent.values())
        stored = sum(snapshot.stored.values())
        return {
            "readings_sent": sent,
            "readings_stored": stored,
            "alerts_opened": sum(1 for a in snapshot.alerts if a["opened_in_run"]),
            "alerts_resolved": sum(1 for a in snapshot.alerts if a["resolved_in_run"]),
            "dead_letters": snapshot.dead_letters,
            "lost": sent - stored,
        }
