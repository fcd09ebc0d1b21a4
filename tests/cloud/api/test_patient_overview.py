"""The patient's overview through the API over real PostgreSQL: readings stored as ingest stores them (alert
rules and twin run in the same transaction), then each sentence checked against an average, a share or a
change computed by hand here, with its unit, never a UCUM code; devices and gateways in words from the
gateway's status as ingest's writer stores it; only the record's own patient sees it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api import overview
from cloud.db.alert_rules import Condition, Rule
from cloud.ingest.validation import StatusUpdate
from cloud.ingest.writer import BatchWriter
from gateway.contract import GatewayStatus
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, make_reading, now, weight
from tests.cloud.api.conftest import TokenFactory, grant

pytestmark = pytest.mark.integration
UCUM_CODES = ("mm[Hg]", "Cel", "[degF]", "kg/m2", "{beats}", "[lb_av]")


def report(conn: psycopg.Connection, status: GatewayStatus, received_at: datetime) -> None:
    """The gateway's status as ingest's writer stores it (gateways.status, last_seen)."""
    with psycopg.connect(conn.info.dsn) as tx:
        BatchWriter(6 * 3600).write(tx, [], received_at, [StatusUpdate(status.gateway_id, status)])


def measure(body: dict, group: str) -> dict:
    return next(m for m in body["measures"] if m["metric_group"] == group)


def no_ucum(body: dict) -> None:
    text = json.dumps(body, ensure_ascii=False)
    for code in UCUM_CODES:
        assert code not in text, f"a raw UCUM code {code!r} reached the patient: {text[:500]}"
    for m in body["measures"]:
        # Every number in a sentence is followed by a unit, a per cent sign, a time span or a range's other end
        # (a category's name, "stage 1", is not a measurement).
        for match in re.finditer(r"(?<!stage )\d+(?:\.\d+)?(?:/\d+)?", m["sentence"]):
            after = m["sentence"][match.end():match.end() + 20]
            assert re.match(r" (mmHg|mg/dL|kg|%|°C|beats per minute|days?|minutes?|hours|readings?|or more|to \d"
                            r"|of the last)", after), f"{match.group()!r} without a unit in {m['sentence']!r}"


def test_blood_pressure_glucose_and_weight_in_words_match_the_hand_computed_numbers(
        client: TestClient, conn: psycopg.Connection, auth: TokenFactory, unique_id: str) -> None:
    pid = f"{unique_id}-pt"
    devices = add_patient(conn, pid, kinds=("blood_pressure", "body_weight", "glucose", "body_temperature"))
    end = now()
    # Five cuff readings in the week before the latest: systolic 690/5 = 138, diastolic 430/5 = 86.
    pressures = [(6, 142, 88), (5, 136, 84), (4, 140, 90), (3, 134, 86)]
    readings = [bp(devices["blood_pressure"], end - timedelta(days=d), s, di) for d, s, di in pressures]
    readings.append(bp(devices["blood_pressure"], end - timedelta(hours=1), 138, 82))
    # Ten glucose values in 14 days: 7 in 70-180 (70 %), one low (10 %), two high; mean 1437/10 = 143.7.
    glucose = [100, 110, 120, 130, 140, 150, 160, 65, 200, 262]
    readings += [make_reading(devices["glucose"], "glucose", end - timedelta(days=12 - i, hours=2), {"glucose": v})
                 for i, v in enumerate(glucose)]
    # Weight: lowest of the 7 days before the latest is 80.0, latest 82.9: +2.9 kg (rule weight_gain_7d: 2.3 kg).
    readings += [weight(devices["body_weight"], end - timedelta(days=d), kg)
                 for d, kg in ((6, 80.0), (4, 80.5), (2, 81.5))]
    readings.append(weight(devices["body_weight"], end - timedelta(minutes=30), 82.9))
    ingest(conn, readings, pid)
    patient = auth("patient", patient=pid)

    response = client.get(f"/v1/patients/{pid}/overview", headers=patient)
    assert response.status_code == 200, response.text
    body = response.json()
    no_ucum(body)
    assert body["timezone"] == "UTC" and body["display_name"] == f"Patient {pid}"
    bp_words = measure(body, "blood_pressure")
    assert bp_words["latest"]["text"] == "138/82 mmHg"
    # 138/86 is below the default stage-2 average rule (>= 140 or >= 90), and ACC/AHA stage 1 (>= 130 or >= 80).
    assert bp_words["sentence"] == ("Your blood pressure this week averaged 138/86 mmHg: within the usual target"
                                    " (below 140/90 mmHg). Doctors call an average like this high blood pressure"
                                    " (stage 1).")
    assert bp_words["status"] == "ok"
    assert [c["metric"] for c in bp_words["charts"]] == ["systolic", "diastolic", "pulse_rate"]
    assert bp_words["charts"][0]["unit_text"] == "mmHg" and bp_words["charts"][2]["unit_text"] == "beats per minute"

    glucose_words = measure(body, "glucose")
    assert glucose_words["latest"]["text"] == "262 mg/dL"
    assert glucose_words["sentence"] == ("In the last 14 days 70 % of your glucose readings were in the target range"
                                         " (70 to 180 mg/dL), below the goal of more than 70 %. 10 % were low"
                                         " (below 70 mg/dL). Your average was 144 mg/dL.")
    assert glucose_words["status"] == "attention"

    weight_words = measure(body, "weight")
    assert weight_words["latest"]["text"] == "82.9 kg"
    assert weight_words["sentence"] == ("Your latest weight is 82.9 kg, 2.9 kg more than your lowest in the 7 days"
                                        " before it: at or above the 2.3 kg gain your care team usually watches for.")
    assert weight_words["status"] == "attention"
    # A thermometer assigned but never used: the measure is there, with nothing to judge.
    temperature = measure(body, "temperature")
    assert (temperature["status"], temperature["latest"]) == ("unknown", None)
    assert temperature["sentence"] == "No readings yet from your thermometer."
    assert {m["metric_group"] for m in body["measures"]} == {"blood_pressure", "glucose", "weight", "temperature"}

    # The care team sets a stricter target (135/85): the same average is now above it, in the words that say so.
    team = f"{unique_id}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Team North')", (team,))
    grant(conn, pid, team, ["readings", "alerts", "twin"])
    put = client.put(f"/v1/patients/{pid}/thresholds/bp_stage2_average",
                     json={"thresholds": {"systolic": 135, "diastolic": 85}},
                     headers=auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,)))
    assert put.status_code == 200, put.text
    bp_words = measure(client.get(f"/v1/patients/{pid}/overview", headers=patient).json(), "blood_pressure")
    assert bp_words["sentence"].startswith("Your blood pressure this week averaged 138/86 mmHg: above the target your"
                                           " care team set (below 135/85 mmHg).")
    assert bp_words["status"] == "attention"


def test_oxygen_heart_rate_and_temperature_in_words(client: TestClient, conn: psycopg.Connection,
                                                      auth: TokenFactory, unique_id: str) -> None:
    pid = f"{unique_id}-pt"
    devices = add_patient(conn, pid, kinds=("pulse_oximetry", "heart_rate", "body_temperature"))
    night = (now() - timedelta(days=1)).replace(hour=2, minute=0, second=0, microsecond=0)
    # One reading a minute: 89 and 88 stand for a minute each below 90 % (2 minutes); mean 462/5 = 92.4.
    spo2 = [make_reading(devices["pulse_oximetry"], "pulse_oximetry", night + timedelta(minutes=i), {"spo2": v})
            for i, v in enumerate((95, 96, 89, 88, 94))]
    hr = [make_reading(devices["heart_rate"], "heart_rate", now() - timedelta(days=d), {"heart_rate": v})
          for d, v in ((3, 60), (2, 70), (1, 80))]
    temps = [make_reading(devices["body_temperature"], "body_temperature", now() - timedelta(days=d, hours=1),
                          {"body_temperature": v}) for d, v in ((3, 36.8), (2, 38.4), (0, 37.0))]
    ingest(conn, spo2 + hr + temps, pid)
    body = client.get(f"/v1/patients/{pid}/overview", headers=auth("patient", patient=pid)).json()
    no_ucum(body)
    oxygen = measure(body, "spo2")
    assert oxygen["latest"]["text"] == "94 %"
    assert oxygen["sentence"] == ("Over the last 7 days your oxygen level averaged 92 %; it was below 90 % for"
                                  " 2 minutes in all. The usual range is 94 to 98 %.")
    assert oxygen["status"] in ("attention", "urgent")  # 88 % is the critical rule's threshold: its alert may be open
    heart = measure(body, "heart_rate")
    assert heart["latest"]["text"] == "80 beats per minute"
    assert heart["sentence"] == "Your heart rate averaged 70 beats per minute over the last 7 days."
    temperature = measure(body, "temperature")
    assert temperature["latest"]["text"] == "37.0 °C"
    assert temperature["sentence"] == ("Your latest temperature was 37.0 °C. You had a fever (38.0 °C or more) on 1"
                                       " of the last 7 days.")


def test_devices_and_gateways_in_words(client: TestClient, conn: psycopg.Connection, auth: TokenFactory,
                                       unique_id: str) -> None:
    pid = f"{unique_id}-pt"
    devices = add_patient(conn, pid, kinds=("blood_pressure", "body_weight", "glucose"))
    ingest(conn, [bp(devices["blood_pressure"], now() - timedelta(hours=3), 120, 78)], pid)
    gateways = {kind: f"{unique_id}-gw-{i}" for i, kind in enumerate(devices)}
    for kind, uid in devices.items():
        conn.execute("UPDATE devices SET bound_gateway_id = %s WHERE uid = %s", (gateways[kind], uid))
    received = datetime.now(UTC)
    report(conn, GatewayStatus(gateway_id=gateways["blood_pressure"], online=True, at=received), received)
    # Two gateways last heard an hour ago: one with 12 readings in its outbox (its internet is gone, as far as the
    # cloud can tell), one with nothing to send.
    hour_ago = received - timedelta(hours=1)
    report(conn, GatewayStatus(gateway_id=gateways["body_weight"], online=False, at=hour_ago, outbox_depth=12),
           hour_ago)
    report(conn, GatewayStatus(gateway_id=gateways["glucose"], online=False, at=hour_ago), hour_ago)

    body = client.get(f"/v1/patients/{pid}/overview", headers=auth("patient", patient=pid)).json()
    by_uid = {d["uid"]: d for d in body["devices"]}
    assert {by_uid[uid]["type_text"] for uid in devices.values()} == {"Blood pressure monitor", "Scale",
                                                                       "Glucose meter"}
    cuff = by_uid[devices["blood_pressure"]]
    assert cuff["battery_pct"] == 80 and cuff["gateway_id"] == gateways["blood_pressure"]
    assert cuff["last_reading_at"] is not None and by_uid[devices["glucose"]]["last_reading_at"] is None
    states = {g["gateway_id"]: g for g in body["gateways"]}
    assert (states[gateways["blood_pressure"]]["state"], states[gateways["blood_pressure"]]["text"]) == (
        "connected", "Connected")
    waiting = states[gateways["body_weight"]]
    assert (waiting["state"], waiting["text"]) == ("waiting_for_internet", "Waiting for internet — 12 readings saved")
    assert datetime.fromisoformat(waiting["since"]) == hour_ago
    assert states[gateways["glucose"]]["state"] == "offline"


def test_only_the_records_own_patient_sees_the_overview(client: TestClient, conn: psycopg.Connection,
                                                        auth: TokenFactory, unique_id: str) -> None:
    pid, other = f"{unique_id}-pt", f"{unique_id}-other"
    add_patient(conn, pid)
    add_patient(conn, other)
    team = f"{unique_id}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'T')", (team,))
    grant(conn, pid, team, ["readings", "alerts", "twin"])
    path = f"/v1/patients/{pid}/overview"
    assert client.get(path, headers=auth("patient", patient=pid)).status_code == 200
    for headers in (auth("patient", patient=other), auth("clinician", sub="dr", care_teams=(team,)),
                    auth("admin", sub="ops")):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 404 and refused.headers["content-type"].startswith("application/problem+json")
    assert client.get(path).status_code == 401
    assert client.get(f"/v1/patients/{unique_id}-nobody/overview",
                      headers=auth("patient", patient=f"{unique_id}-nobody")).status_code == 404
    # Each look is audited, refused or not, naming the patient.
    rows = conn.execute("SELECT role, outcome FROM audit_log WHERE action = 'GET /v1/patients/{patient_id}/overview'"
                        " AND patient_ids @> ARRAY[%s] ORDER BY id", (pid,)).fetchall()
    assert rows == [("patient", "allowed"), ("patient", "not_found"), ("clinician", "not_found"),
                    ("admin", "not_found")]


@pytest.mark.unit
def test_words_never_show_a_ucum_code_or_a_bare_number() -> None:
    assert overview.unit_text("systolic") == "mmHg" and overview.unit_text("body_temperature") == "°C"
    assert overview.unit_text("pulse_rate") == overview.unit_text("heart_rate") == "beats per minute"
    assert overview.scopes_text(["twin", "readings", "alerts"]) == "readings, alerts and your record summary"
    assert overview.scopes_text(["readings"]) == "readings"
    words = overview.gateway_words({"state": "online", "outbox_depth": 3})
    assert words == {"state": "connected", "text": "Connected — sending 3 readings saved", "since": None}
    assert overview.gateway_words({"state": "not_reporting", "outbox_depth": 1, "last_contact_at": None})["text"] == (
        "Waiting for internet — 1 reading saved")
    assert overview.what_words("GET /v1/patients/{patient_id}/summaries/blood-pressure") == (
        "your blood pressure readings")
    assert overview.who_words("clinician", "ada", "Dr Ada", ["Team North"]) == "Dr Ada (Team North)"
    assert overview.outcome_words("not_found", "GET") == "was refused"


@pytest.mark.unit
def test_a_rounded_average_never_contradicts_the_rules_verdict() -> None:
    rule = Rule("bp_stage2_average", "average", "blood_pressure",
                (Condition("systolic", ">=", 140), Condition("diastolic", ">=", 90)),
                {"window_days": 7, "min_readings": 4}, "info", 5, 1, 1440, True, "stage 2 average", "ACC/AHA 2017")
    at = datetime.now(UTC)
    summary = {"latest": {"systolic": 141, "diastolic": 87, "measured_at": at},
               "rule_average": {"systolic": 139.6, "diastolic": 87.8, "category": "stage_1_hypertension",
                                "readings": 6, "min_readings": 4, "window_days": 7.0, "until": at}}
    words = overview.blood_pressure(summary, rule, at, "UTC")
    assert words["sentence"].startswith("Your blood pressure this week averaged 139.6/88 mmHg: within the usual target")
    assert words["status"] == "ok"
    summary["rule_average"] |= {"systolic": 140.0, "readings": 3}
    words = overview.blood_pressure(summary, rule, at, "UTC")
    assert words["sentence"] == ("Your blood pressure this week averaged 140/88 mmHg: above the usual target (below"
                                 " 140/90 mmHg). Doctors call an average like this high blood pressure (stage 1)."
                                 " It comes from 3 readings; your care team judges the average from 4 or more.")
    assert words["status"] == "attention"
    steady = overview.weight({"latest_kg": 80.04, "latest_at": at, "changes": [
        {"label": "1_day", "change_kg": None, "threshold_kg": 0.9},
        {"label": "7_days", "change_kg": -0.4, "threshold_kg": 2.3}]}, {})
    assert steady == {"latest": {"text": "80.0 kg", "at": at}, "status": "ok",
                      "sentence": "Your latest weight is 80.0 kg, no more than your lowest in the 7 days before it:"
                                  " no gain."}
