"""Benchmark (``pytest -m bench tests/bench/test_alert_notify_bench.py -s``): alert committed → first
escalation e-mail received, through the whole human loop. 100 crisis readings for 100 patients of one
care team are stored with their alerts in one transaction each (the effects ingest runs, committed at
10/s); two real ``rpm-cloud scheduler`` processes at the default ``--deliver-every 1`` start each
alert's escalation, queue step 1 (the on-call nurse, e-mail) and send it over STARTTLS + AUTH to a real
SMTP server (aiosmtpd, test CA). Latency is from each commit to the server taking the message (DATA).
Every message must arrive exactly once; p50/p99 are printed, and p99 is held to the 5 s of issue 17.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import trustme

from cloud.alerts import escalation_config as config
from tests.cloud.alerts.channel_servers import SmtpServer, ca_file
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest
from tests.waiting import wait_until

pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
ALERTS = 100
RATE = 10.0
TEAM = "bench-team"
USERS = {"rpm-mailer": "bench-pass"}


def test_commit_to_first_escalation_email_with_two_schedulers(fresh_database_url, unique_id, tmp_path):
    ca = trustme.CA()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Bench')", (TEAM,))
        config.replace_contacts(conn, TEAM, config.Contacts(contacts=[
            {"subject": "nurse-ann", "display_name": "Ann", "email": "ann@clinic.example", "roles": ["nurse"]}]), "b")
        config.replace_schedules(conn, TEAM, config.Schedules(schedules=[
            {"role": "nurse", "timezone": "Europe/Berlin", "rotation": ["nurse-ann"],
             "rotation_start": "2026-01-05T08:00:00"}]), "b")
        config.replace_policies(conn, TEAM, config.Policies(policies=[{"name": "crisis", "steps": [
            {"delay_s": 0, "target_type": "on_call", "target": "nurse", "channels": ["email"]},
            {"delay_s": 600, "target_type": "role", "target": "nurse", "channels": ["email"]}]}]), "b")
        cuffs = []
        for i in range(ALERTS):
            patient = f"{unique_id}-{i}"
            cuffs.append((patient, add_patient(conn, patient)["blood_pressure"]))
            conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s,"
                         " '{alerts}', %s)", (patient, TEAM, patient))
        with SmtpServer(ca, security="starttls", users=USERS) as server:
            env = {**os.environ, "RPM_DATABASE_URL": fresh_database_url, "RPM_SMTP_HOST": "127.0.0.1",
                   "RPM_SMTP_PORT": str(server.port), "RPM_SMTP_SECURITY": "starttls",
                   "RPM_SMTP_CA_FILE": str(ca_file(ca, tmp_path)), "RPM_SMTP_USERNAME": "rpm-mailer",
                   "RPM_SMTP_PASSWORD": "bench-pass", "RPM_SMTP_FROM": "alerts@rpm.example"}
            logs = [(tmp_path / f"scheduler{n}.log").open("w") for n in range(2)]
            schedulers = [subprocess.Popen([sys.executable, "-m", "cloud.cli", "scheduler", "--no-mqtt",
                                            "--deliver-every", "1", "--missing-every", "3600"], cwd=REPO, env=env,
                                           stdout=log, stderr=subprocess.STDOUT) for log in logs]
            try:
                committed: dict[int, float] = {}
                start = time.monotonic()
                for i, (patient, cuff) in enumerate(cuffs):
                    delay = start + i / RATE - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the offered schedule, not synchronisation
                    [opened] = [a for a in alerts_in(ingest(conn, [bp(cuff, datetime.now(UTC), 200, 110)], patient))
                                if a.rule == "bp_crisis"]
                    committed[int(opened.alert_id)] = time.time()
                wait_until(lambda: len(server.received) >= ALERTS, timeout=60, what="every first e-mail")
                time.sleep(2.5)  # two more passes of each scheduler: a double send would show up now
            finally:
                for process in schedulers:
                    process.terminate()
                    process.wait(10)
        deliveries = [int(re.match(r"<rpm\.delivery\.(\d+)@", r.message["Message-ID"]).group(1))
                      for r in server.received]
        alert_of = dict(conn.execute("SELECT id, alert_id FROM alert_deliveries WHERE id = ANY(%s)",
                                     (deliveries,)).fetchall())
    alerts = [alert_of[d] for d in deliveries]
    assert sorted(alerts) == sorted(committed), "one first e-mail per alert, exactly once across two schedulers"
    latency = np.array([at - committed[a] for a, at in zip(alerts, server.received_at, strict=True)])
    p50, p99 = np.percentile(latency, [50, 99])
    print(f"\nalert commit -> first escalation e-mail at the SMTP server, {ALERTS} alerts at {RATE:g}/s,"
          f" 2 schedulers at --deliver-every 1, STARTTLS+AUTH: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
          f" max {latency.max() * 1000:.0f} ms")
    assert p99 < 5.0
