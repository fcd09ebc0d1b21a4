"""A crisis reaches a person, end to end through real processes: a simulated BLE cuff's crisis reading →
``rpm-gateway run`` → the broker → ``rpm-cloud ingest`` (the alert opens in its transaction) → two
``rpm-cloud scheduler`` processes running the care team's escalation policy (set through the API) →
e-mail over STARTTLS to a real SMTP server (aiosmtpd, test CA, AUTH).

The nurse's e-mail arrives within 5 s of the alert's commit; nobody acknowledges, so the physician's
comes after the step's delay; the physician acknowledges through the API and the team lead's step never
goes out. The patient, who opted in, is asked once to measure again. With two schedulers polling the
same outbox and escalations, every message arrives exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import trustme

from cloud.api.tokens import mint_token
from cloud.embedded import free_port
from cloud.settings import CloudSettings
from tests.cloud.alerts.channel_servers import SmtpServer, ca_file
from tests.e2e.processes import command, running, wait_for, write_gateway_config

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CUFF = "C0:FF:EE:17:0E:01"
PATIENT = "p-e2e-escalation"
TEAM = "e2e-cardiology"
SECOND_STEP_S = 4
THIRD_STEP_S = 10
USERS = {"rpm-mailer": "e2e-pass"}
CONTACTS = [
    {"subject": "nurse-ann", "display_name": "Ann Nurse", "email": "ann@clinic.example", "roles": ["nurse"]},
    {"subject": "dr-kim", "display_name": "Dr Kim", "email": "kim@clinic.example", "roles": ["physician"]},
    {"subject": "lead-lee", "display_name": "Lee Lead", "email": "lee@clinic.example", "roles": ["team_lead"]},
]
POLICY = {"name": "crisis", "min_severity": "critical", "steps": [
    {"delay_s": 0, "target_type": "person", "target": "nurse-ann", "channels": ["email"]},
    {"delay_s": SECOND_STEP_S, "target_type": "role", "target": "physician", "channels": ["email"]},
    {"delay_s": THIRD_STEP_S, "target_type": "person", "target": "lead-lee", "channels": ["email"]},
]}


def test_a_crisis_email_escalates_until_acknowledged_and_two_schedulers_send_nothing_twice(
    fresh_database_url: str, mqtt_broker, unique_id: str, tmp_path: Path
) -> None:
    measured = (datetime.now() - timedelta(minutes=2)).replace(microsecond=0)
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"peripherals": [{
        "type": "blood_pressure", "address": CUFF, "name": "E2E cuff", "has_current_time": False,
        "records": [{"systolic": 194, "diastolic": 112, "mean_arterial": 139, "pulse": 84, "user_id": 1,
                     "timestamp": measured.isoformat()}],
    }]}))
    config = write_gateway_config(tmp_path / "gateway.toml", f"gw-{unique_id}", tmp_path / "gateway-data",
                                  mqtt_broker.url, [CUFF])
    dev_key = f"e2e-{unique_id}-dev-key-0123456789abcdef"
    api_port = free_port()
    ca = trustme.CA()
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=dev_key)

    def bearer(role: str, sub: str, **kw: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(settings, role=role, sub=sub, **kw)}"}

    with SmtpServer(ca, security="starttls", users=USERS) as smtp:
        env = {"RPM_DATABASE_URL": fresh_database_url, "RPM_MQTT_URL": mqtt_broker.url, "RPM_JWT_DEV_KEY": dev_key,
               "RPM_SIM_BLE_SCENARIO": str(scenario), "RPM_SMTP_HOST": "127.0.0.1", "RPM_SMTP_PORT": str(smtp.port),
               "RPM_SMTP_SECURITY": "starttls", "RPM_SMTP_CA_FILE": str(ca_file(ca, tmp_path)),
               "RPM_SMTP_USERNAME": "rpm-mailer", "RPM_SMTP_PASSWORD": "e2e-pass",
               "RPM_SMTP_FROM": "alerts@rpm.example", "RPM_PUBLIC_URL": f"http://127.0.0.1:{api_port}"}
        assign = subprocess.run(
            [*command("rpm-cloud"), "assign", f"ble:{CUFF}", PATIENT, "--user-index", "1", "--create-patient",
             "--from", "2000-01-01T00:00:00+00:00"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert assign.returncode == 0, assign.stderr + assign.stdout
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Cardiology')", (TEAM,))
            conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES"
                         " (%s, %s, '{readings,alerts}', %s)", (PATIENT, TEAM, PATIENT))

        logs = [tmp_path / n for n in ("ingest.log", "api.log", "scheduler-1.log", "scheduler-2.log", "gateway.log")]
        scheduler = [*command("rpm-cloud"), "scheduler", "--deliver-every", "1", "--missing-every", "3600"]
        with (
            running([*command("rpm-cloud"), "ingest", "--workers", "1"], env, logs[0]),
            running([*command("rpm-cloud"), "api", "--port", str(api_port)], env, logs[1]),
            running(scheduler, env, logs[2]),
            running(scheduler, env, logs[3]),
        ):
            api = f"http://127.0.0.1:{api_port}"
            lead = bearer("care_team", "lead-lee", care_teams=(TEAM,))

            def put(path: str, body: dict) -> httpx.Response | None:
                try:
                    return httpx.put(f"{api}{path}", json=body, headers=lead, timeout=5)
                except httpx.TransportError:
                    return None  # the API is still starting

            first = wait_for(lambda: put(f"/v1/care-teams/{TEAM}/escalation/contacts", {"contacts": CONTACTS}),
                             30, "the API", logs)
            assert first.status_code == 200, first.text
            policies = put(f"/v1/care-teams/{TEAM}/escalation/policies", {"policies": [POLICY]})
            assert policies is not None and policies.status_code == 200, policies.text if policies else None
            opted = httpx.put(f"{api}/v1/patients/{PATIENT}/contacts/email", json={"address": "pat@home.example"},
                              headers=bearer("patient", PATIENT, patient=PATIENT), timeout=5)
            assert opted.status_code == 200, opted.text

            with running([*command("rpm-gateway"), "run", "--config", str(config)], env, logs[4]):
                def mail_to(address: str) -> list[int]:
                    return [i for i, m in enumerate(smtp.received) if address in m.rcpt_tos]

                nurse = wait_for(lambda: mail_to("ann@clinic.example"), 60, "the nurse's e-mail", logs)
                with psycopg.connect(fresh_database_url) as conn:
                    alert_id, opened_at = conn.execute("SELECT id, opened_at FROM alerts WHERE patient_id = %s"
                                                       " AND rule_id = 'bp_crisis'", (PATIENT,)).fetchone()
                nurse_at = smtp.received_at[nurse[0]]
                assert nurse_at - opened_at.timestamp() < 5.0, "the first e-mail came later than 5 s after the commit"
                message = smtp.received[nurse[0]].message
                assert "Hypertensive crisis" in message["Subject"] and smtp.received[nurse[0]].tls_version
                text = message.get_body(("plain",)).get_content()
                assert "194" in text and "mmHg" in text and f"/ui/#/alerts/{alert_id}?link=" in text

                physician = wait_for(lambda: mail_to("kim@clinic.example"), SECOND_STEP_S + 10,
                                     "the physician's escalation e-mail", logs)
                physician_at = smtp.received_at[physician[0]]
                assert SECOND_STEP_S - 1.0 <= physician_at - nurse_at < SECOND_STEP_S + 5.0
                escalated = smtp.received[physician[0]].message.get_body(("plain",)).get_content()
                assert "Not acknowledged after" in escalated
                acked = httpx.post(f"{api}/v1/alerts/{alert_id}/acknowledge", json={"note": "calling the patient"},
                                   headers=bearer("clinician", "dr-kim", care_teams=(TEAM,)), timeout=5)
                assert acked.status_code == 200, acked.text

                # The team lead's step would be due THIRD_STEP_S - SECOND_STEP_S after the physician's: wait past it.
                time.sleep(THIRD_STEP_S - SECOND_STEP_S + 4)  # the absence of a message needs time to show
                patient_mail = mail_to("pat@home.example")

    assert mail_to("lee@clinic.example") == [], "acknowledging did not stop the chain"
    recipients = sorted(r for m in smtp.received for r in m.rcpt_tos)
    assert recipients == ["ann@clinic.example", "kim@clinic.example", "pat@home.example"], recipients
    assert len({m.message["Message-ID"] for m in smtp.received}) == 3
    assert "in 5 minutes" in smtp.received[patient_mail[0]].message.get_body(("plain",)).get_content()
    with psycopg.connect(fresh_database_url) as conn:
        rows = conn.execute("SELECT e.stop_reason, count(d.id), count(d.delivered_at), max(d.attempts)"
                            " FROM alert_escalations e LEFT JOIN alert_deliveries d ON d.escalation_id = e.id"
                            " GROUP BY e.id").fetchall()
        attempts = conn.execute("SELECT count(*) FROM delivery_attempts t JOIN alert_deliveries d"
                                " ON d.id = t.delivery_id WHERE d.channel = 'email'").fetchone()[0]
    assert rows == [("acknowledged", 2, 2, 1)]
    assert attempts == 3
