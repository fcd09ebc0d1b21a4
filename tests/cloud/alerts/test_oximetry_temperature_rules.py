"""The oximetry and temperature rules of migration 0530, through the real hooks on real PostgreSQL:
an overnight desaturation opens one alert, a COPD patient's 88-92 % target is an override, a drop
below the patient's own median is judged in points, fever and hypothermia open, and readings flagged
invalid, low perfusion, sensor displaced or demonstration data are stored but never judged. FHIR
Observations for both kinds are validated with fhir.resources."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from fhir.resources.R4B.observation import Observation

from cloud.alerts import service as alerts
from cloud.twin.fhir import observations_from_row
from gateway.contract import Reading, compute_reading_id
from gateway.metrics import METRICS
from tests.cloud.alerts.scripted_patient import alerts_in, ingest, now

pytestmark = pytest.mark.integration

_seq = itertools.count(1)
PROFILES = {"pulse_oximetry": "ble.pulse_oximeter", "body_temperature": "ble.thermometer"}


def patient(conn, pid: str) -> dict[str, str]:
    conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, %s)", (pid, f"Patient {pid}"))
    devices = {}
    for kind, profile in PROFILES.items():
        uid = f"ble:{pid}:{kind}"
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', %s)", (uid, profile))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id, created_at) VALUES (%s, %s, %s)",
                     (uid, pid, now() - timedelta(days=30)))
        devices[kind] = uid
    return devices


def reading(uid: str, kind: str, at: datetime, values: dict[str, float], flags: tuple[str, ...] = ()) -> Reading:
    window = f"{at.isoformat()}#{next(_seq)}"
    return Reading(
        id=compute_reading_id(uid, kind, None, discriminator=window), kind=kind, measured_at=at, received_at=now(),
        device={"uid": uid, "transport": "ble", "profile": PROFILES[kind]}, clock={"judgement": "gateway"},
        values={m: {"value": v, "unit": METRICS[m].unit} for m, v in values.items()}, flags=list(flags),
    )


def opened(notes) -> list[str]:
    return sorted(a.rule for a in alerts_in(notes) if a.status == "open")


def test_overnight_desaturation_opens_one_alert_and_flagged_lows_open_none(conn, unique_id) -> None:
    ox = patient(conn, unique_id)["pulse_oximetry"]
    night = now() - timedelta(hours=4)
    # Disowned by the oximeter: each would be critical if judged.
    flagged = [reading(ox, "pulse_oximetry", night + timedelta(minutes=i), {"spo2": 72, "spo2_pulse_rate": 80}, f)
               for i, f in enumerate([("invalid_measurement",), ("low_perfusion",), ("sensor_displaced",),
                                      ("demonstration_data", "averaged")])]
    assert opened(ingest(conn, flagged, unique_id)) == []
    stored = conn.execute("SELECT count(*) FROM readings WHERE device_uid = %s", (ox,)).fetchone()[0]
    assert stored == 4  # stored, never judged
    dip = [reading(ox, "pulse_oximetry", night + timedelta(minutes=10 + i), {"spo2": v, "spo2_pulse_rate": 64},
                   ("averaged",)) for i, v in enumerate([91, 90, 90, 91])]
    notes = ingest(conn, dip, unique_id)
    assert opened(notes) == ["spo2_low"]
    assert [a.status for a in alerts_in(notes)].count("open") == 1


def test_copd_target_range_is_a_per_patient_override(conn, unique_id) -> None:
    ox = patient(conn, unique_id)["pulse_oximetry"]
    alerts.set_rule_override(conn, unique_id, "spo2_low", by="dr.c", thresholds={"spo2": 86}, note="COPD 88-92 %")
    alerts.set_rule_override(conn, unique_id, "spo2_critical", by="dr.c", thresholds={"spo2": 84})
    t = now() - timedelta(hours=2)
    assert opened(ingest(conn, [reading(ox, "pulse_oximetry", t, {"spo2": 89})], unique_id)) == []
    assert opened(ingest(conn, [reading(ox, "pulse_oximetry", t + timedelta(minutes=1), {"spo2": 85})],
                         unique_id)) == ["spo2_low"]
    assert "spo2_critical" in opened(ingest(conn, [reading(ox, "pulse_oximetry", t + timedelta(minutes=2),
                                                           {"spo2": 84})], unique_id))


def test_a_drop_below_the_patients_own_median_is_judged_in_points(conn, unique_id) -> None:
    ox = patient(conn, unique_id)["pulse_oximetry"]
    base = now() - timedelta(days=6)
    week = [reading(ox, "pulse_oximetry", base + timedelta(hours=12 * i), {"spo2": 97 + (i % 2)}) for i in range(10)]
    assert opened(ingest(conn, week, unique_id)) == []
    notes = ingest(conn, [reading(ox, "pulse_oximetry", now() - timedelta(minutes=5), {"spo2": 93})], unique_id)
    assert opened(notes) == ["spo2_baseline_drop"]  # 93 is above 92: only the own-baseline rule sees it


def test_fever_and_hypothermia(conn, unique_id) -> None:
    th = patient(conn, unique_id)["body_temperature"]
    t = now() - timedelta(hours=3)
    assert opened(ingest(conn, [reading(th, "body_temperature", t, {"body_temperature": 37.1})], unique_id)) == []
    assert opened(ingest(conn, [reading(th, "body_temperature", t + timedelta(hours=1),
                                        {"body_temperature": 38.4})], unique_id)) == ["fever"]
    assert opened(ingest(conn, [reading(th, "body_temperature", t + timedelta(hours=2),
                                        {"body_temperature": 34.8})], unique_id)) == ["hypothermia"]


def test_fhir_oxygen_saturation_and_body_temperature_observations() -> None:
    base = {"id": "r1", "patient_id": "p-1", "device_uid": "ble:AA", "measured_at": now(), "flags": ["averaged"]}
    spo2, pulse = [Observation.model_validate(o) for o in observations_from_row(
        {**base, "kind": "pulse_oximetry", "values": {"spo2": {"value": 91, "unit": "%"},
                                                      "spo2_pulse_rate": {"value": 66, "unit": "/min"},
                                                      "pulse_amplitude_index": {"value": 2.1, "unit": "%"}}})]
    codes = [c.code for c in spo2.code.coding]
    assert codes[:2] == ["2708-6", "59408-5"] and "150456" in codes
    assert spo2.meta.profile == ["http://hl7.org/fhir/StructureDefinition/oxygensat"]
    assert (float(spo2.valueQuantity.value), spo2.valueQuantity.code) == (91.0, "%")
    assert "8889-8" in [c.code for c in pulse.code.coding] and "149530" in [c.code for c in pulse.code.coding]
    [temp] = [Observation.model_validate(o) for o in observations_from_row(
        {**base, "id": "r2", "kind": "body_temperature", "body_site": "mouth",
         "values": {"body_temperature": {"value": 38.4, "unit": "Cel"}}})]
    assert "8310-5" in [c.code for c in temp.code.coding] and "150364" in [c.code for c in temp.code.coding]
    assert temp.meta.profile == ["http://hl7.org/fhir/StructureDefinition/bodytemp"]
    assert temp.valueQuantity.code == "Cel" and temp.bodySite.coding[0].code == "123851003"
