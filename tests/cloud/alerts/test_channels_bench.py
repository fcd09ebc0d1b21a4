"""Benchmark: message committed to the outbox -> e-mail received by a real SMTP server (aiosmtpd, STARTTLS
with a test CA, AUTH), sent by two real ``rpm-cloud scheduler`` processes polling at the default
``--deliver-every 1``. 100 alerts, one message each, committed at 10/s; latency is from each commit
to the server taking the message (DATA). Each message must arrive exactly once."""

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

from cloud.alerts.channels import queue_message
from tests.cloud.alerts.channel_servers import SmtpServer, ca_file
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest
from tests.waiting import wait_until

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[3]
ALERTS = 100
RATE = 10.0
USERS = {"rpm-mailer": "bench-pass"}


@pytest.mark.timeout(300)
def test_alert_email_latency_with_two_schedulers(fresh_database_url, unique_id, tmp_path):
    ca = trustme.CA()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        alert_ids = []
        for i in range(ALERTS):
            patient = f"{unique_id}-{i}"
            cuff = add_patient(conn, patient)["blood_pressure"]
            [opened] = alerts_in(ingest(conn, [bp(cuff, datetime.now(UTC), 200, 110)], patient))
            alert_ids.append(int(opened.alert_id))
        with SmtpServer(ca, security="starttls", users=USERS) as server:
            env = {**os.environ, "RPM_DATABASE_URL": fresh_database_url, "RPM_SMTP_HOST": "127.0.0.1",
                   "RPM_SMTP_PORT": str(server.port), "RPM_SMTP_SECURITY": "starttls",
                   "RPM_SMTP_CA_FILE": str(ca_file(ca, tmp_path)), "RPM_SMTP_USERNAME": "rpm-mailer",
                   "RPM_SMTP_PASSWORD": "bench-pass", "RPM_SMTP_FROM": "alerts@rpm.example"}
            logs = [(tmp_path / f"scheduler{n}.log").open("w") for n in range(2)]
            schedulers = [subprocess.Popen([sys.executable, "-m", "cloud.cli", "scheduler", "--no-mqtt",
                                            "--deliver-every", "1"], cwd=REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT) for log in logs]
            try:
                committed: dict[int, float] = {}
                start = time.monotonic()
                for i, alert_id in enumerate(alert_ids):
                    delay = start + i / RATE - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the offered schedule, not synchronisation
                    with conn.transaction():
                        delivery_id = queue_message(conn, channel="email", address=f"nurse{i}@clinic.example",
                                                    alert=alert_id, recipient=f"nurse-{i}", audience="care_team",
                                                    kind="alert", context={}, now=datetime.now(UTC))
                    committed[delivery_id] = time.time()
                wait_until(lambda: len(server.received) >= ALERTS, timeout=60, what="every e-mail received")
                time.sleep(2.5)  # two more passes of each scheduler: a double send would show up now
            finally:
                for process in schedulers:
                    process.terminate()
                    process.wait(10)
    ids = [int(re.match(r"<rpm\.delivery\.(\d+)@", r.message["Message-ID"]).group(1)) for r in server.received]
    assert sorted(ids) == sorted(committed), "every message exactly once across two schedulers"
    latency = np.array([server_times - committed[i] for i, server_times in zip(ids, server.received_at, strict=True)])
    p50, p99 = np.percentile(latency, [50, 99])
    print(f"\ncommit -> SMTP DATA, {ALERTS} e-mails, 2 schedulers at --deliver-every 1, STARTTLS+AUTH:"
          f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {latency.max() * 1000:.0f} ms")
    assert p99 < 5.0
