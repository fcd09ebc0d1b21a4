"""The e-mail channel against a real SMTP server (aiosmtpd): STARTTLS and implicit TLS with a certificate
from a test CA, AUTH, both bodies and the headers as received; failures recorded attempt by attempt."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
import trustme

from cloud.alerts.channels import deliveries_of, queue_message
from cloud.alerts.channels.email import Mailer, SmtpConfig
from cloud.alerts.delivery import Backoff, deliver_due
from tests.cloud.alerts.channel_servers import SmtpServer, ca_file
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest
from tests.cloud.alerts.webhook_receiver import FAST, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
SENDER = "RPM alerts <alerts@rpm.example>"
USERS = {"rpm-mailer": "s3cret-pass"}


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def crisis(conn: psycopg.Connection, patient_id: str, *, name: str = "Ada Lovelace",
           zone: str = "America/New_York", at: datetime | None = None) -> int:
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    conn.execute("UPDATE patients SET display_name = %s, timezone = %s WHERE id = %s", (name, zone, patient_id))
    at = at or datetime.now(UTC).replace(microsecond=0)
    [opened] = alerts_in(ingest(conn, [bp(cuff, at, 200, 110, pulse=88)], patient_id))
    return int(opened.alert_id)


def queue_email(conn: psycopg.Connection, alert_id: int, *, to: str = "nurse.joy@clinic.example",
                kind: str = "alert", max_attempts: int | None = None, context: dict | None = None) -> int:
    with conn.transaction():
        return queue_message(conn, channel="email", address=to, alert=alert_id, recipient="nurse.joy",
                             audience="care_team", kind=kind, context=context or {}, max_attempts=max_attempts,
                             now=datetime.now(UTC), public_url="https://rpm.example")


def mailer(port: int, security: str, ca_path=None, **kw) -> Mailer:
    return Mailer(SmtpConfig(host="127.0.0.1", port=port, security=security, ca_file=ca_path, sender=SENDER,
                             timeout_s=5, **kw))


def send(conn: psycopg.Connection, smtp: Mailer, backoff: Backoff = FAST):
    with httpx.Client(timeout=2) as http:
        return deliver_due(conn, http=http, backoff=backoff, mailer=smtp)


def parts(message):
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return plain, html


def test_alert_email_over_starttls_with_auth_names_patient_reading_rule_and_link(conn, unique_id, ca, tmp_path):
    measured = datetime(2026, 7, 14, 22, 30, tzinfo=UTC)  # 18:30 in New York (EDT)
    alert_id = crisis(conn, unique_id, at=measured)
    delivery_id = queue_email(conn, alert_id)
    with SmtpServer(ca, security="starttls", users=USERS) as server:
        report = send(conn, mailer(server.port, "starttls", ca_file(ca, tmp_path), username="rpm-mailer",
                                   password="s3cret-pass"))
    assert (report.delivered, report.retrying, report.failed) == (1, 0, 0)
    [got] = server.received
    assert got.tls_version is not None and got.tls_version.startswith("TLS")
    assert got.login == "rpm-mailer"
    assert (got.mail_from, got.rcpt_tos) == ("alerts@rpm.example", ["nurse.joy@clinic.example"])
    message = got.message
    assert message["From"] == SENDER and message["To"] == "nurse.joy@clinic.example"
    assert message["Message-ID"] == f"<rpm.delivery.{delivery_id}@rpm.example>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert abs((parsedate_to_datetime(message["Date"]) - datetime.now(UTC)).total_seconds()) < 60
    assert message["Subject"] == "[RPM CRITICAL] Hypertensive crisis - Ada Lovelace"
    plain, html = parts(message)
    for body in (plain, html):
        assert "Ada Lovelace" in body and f"patient {unique_id}" in body
        assert "blood pressure 200/110 mmHg, pulse 88 /min" in body
        assert "Hypertensive crisis: systolic &gt;= 180" in body or "Hypertensive crisis: systolic >= 180" in body
        assert "Tue 14 Jul 2026 18:30 (America/New_York)" in body
        assert "mm[Hg]" not in body
    [link] = re.findall(r"https://rpm\.example/ui/#/alerts/(\d+)\?link=([A-Za-z0-9_-]+)", plain)
    assert int(link[0]) == alert_id
    assert f'href="https://rpm.example/ui/#/alerts/{alert_id}?link={link[1]}"' in html
    # Only the token's hash is stored, for this recipient.
    stored = conn.execute("SELECT recipient, token_hash, expires_at - created_at FROM alert_links").fetchall()
    assert len(stored) == 1 and stored[0][0] == "nurse.joy" and stored[0][1] != link[1].encode()
    assert stored[0][2].total_seconds() == 24 * 3600
    [delivery] = deliveries_of(conn, alert_id)
    assert (delivery["channel"], delivery["status"], delivery["attempt_count"]) == ("email", "sent", 1)
    assert [(a["attempt"], a["outcome"], a["error"]) for a in delivery["attempts"]] == [(1, "sent", None)]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS: aiosmtpd cannot tell
def test_implicit_tls_and_data_in_the_html_is_escaped(conn, unique_id, ca, tmp_path):
    alert_id = crisis(conn, unique_id, name='<script>alert("x")</script> & Co', zone="Europe/Berlin")
    queue_email(conn, alert_id, kind="escalation", context={"minutes": 10, "step": 2})
    with SmtpServer(ca, security="tls", users=USERS) as server:
        assert send(conn, mailer(server.port, "tls", ca_file(ca, tmp_path), username="rpm-mailer",
                                 password="s3cret-pass")).delivered == 1
    [got] = server.received
    assert got.tls_version is not None and got.login == "rpm-mailer"
    assert got.message["Subject"].startswith("[RPM CRITICAL, escalated] Hypertensive crisis")
    plain, html = parts(got.message)
    assert plain.startswith("Not acknowledged after 10 min: critical alert for <script>")
    assert "<script>" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in html
    assert "Escalation step" in html and "(Europe/Berlin)" in plain


def test_an_untrusted_certificate_is_a_tls_failure_never_a_send(conn, unique_id, ca):
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id)
    with SmtpServer(ca, security="starttls") as server:
        report = send(conn, mailer(server.port, "starttls"))  # the system store does not know the test CA
    assert (report.delivered, report.retrying) == (0, 1) and server.received == []
    [delivery] = deliveries_of(conn, alert_id)
    assert delivery["status"] == "retrying" and delivery["last_error"].startswith("tls: ")


def test_refused_server_records_a_failed_attempt_then_the_retry_delivers(conn, unique_id, ca, tmp_path):
    port = free_port()  # nothing listens yet
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id)
    smtp = mailer(port, "starttls", ca_file(ca, tmp_path), username="rpm-mailer", password="s3cret-pass")
    assert send(conn, smtp).retrying == 1
    [delivery] = deliveries_of(conn, alert_id)
    assert delivery["status"] == "retrying" and delivery["last_error"].startswith("refused: ")
    with SmtpServer(ca, security="starttls", users=USERS, port=port) as server:
        wait_until(lambda: send(conn, smtp).delivered == 1, what="the retry after the server came up")
    assert len(server.received) == 1
    [delivery] = deliveries_of(conn, alert_id)
    outcomes = [(a["outcome"], (a["error"] or "").split(":")[0]) for a in delivery["attempts"]]
    assert outcomes[0] == ("failed", "refused") and outcomes[-1] == ("sent", "")
    assert delivery["status"] == "sent" and delivery["attempt_count"] == len(outcomes)


def test_a_wrong_password_is_an_auth_failure(conn, unique_id, ca, tmp_path):
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id)
    with SmtpServer(ca, security="starttls", users=USERS) as server:
        send(conn, mailer(server.port, "starttls", ca_file(ca, tmp_path), username="rpm-mailer", password="nope"))
    assert server.received == []
    assert deliveries_of(conn, alert_id)[0]["last_error"].startswith("auth: ")


def test_a_row_with_max_attempts_gives_up_after_them(conn, unique_id):
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id, max_attempts=1)  # an escalation step: fall back fast instead of retrying
    report = send(conn, mailer(free_port(), "none"))
    assert (report.retrying, report.failed) == (0, 1)
    [delivery] = deliveries_of(conn, alert_id)
    assert delivery["status"] == "failed" and delivery["failed_at"] is not None and delivery["attempt_count"] == 1


def test_a_refused_recipient_gives_up_at_once(conn, unique_id, ca, tmp_path):
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id, to="gone@clinic.example")
    with SmtpServer(ca, security="starttls", refuse=["gone@clinic.example"]) as server:
        report = send(conn, mailer(server.port, "starttls", ca_file(ca, tmp_path)))
    assert report.failed == 1 and server.received == []
    [delivery] = deliveries_of(conn, alert_id)
    assert delivery["status"] == "failed" and "550" in delivery["last_error"]


def test_unconfigured_email_fails_visibly(conn, unique_id):
    alert_id = crisis(conn, unique_id)
    queue_email(conn, alert_id)
    assert send(conn, Mailer(SmtpConfig(host=None))).retrying == 1
    assert "RPM_SMTP_HOST" in deliveries_of(conn, alert_id)[0]["last_error"]


def test_the_measurement_time_is_the_patients_wall_clock(conn, unique_id, ca, tmp_path):
    measured = datetime(2026, 1, 5, 3, 15, tzinfo=UTC)
    alert_id = crisis(conn, unique_id, zone="Asia/Tokyo", at=measured)
    queue_email(conn, alert_id)
    with SmtpServer(ca, security="none") as server:
        assert send(conn, mailer(server.port, "none")).delivered == 1
    plain, _ = parts(server.received[0].message)
    local = measured.astimezone(ZoneInfo("Asia/Tokyo"))
    assert f"{local:%a %d %b %Y %H:%M} (Asia/Tokyo)" in plain and "12:15" in plain
    assert server.received[0].tls_version is None
