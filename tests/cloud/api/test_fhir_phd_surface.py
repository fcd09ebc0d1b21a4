"""The PHD IG mapping and the FHIR surface a generic client uses: every resource the API emits validates with
fhir.resources (R4B) and with @medplum/core (a second, independent validator, tests/fhir_validator); a
client discovers the server from /fhir/metadata, pages a patient's Observations by date through ``link``
next, and follows each to its Device and gateway; Consent and AuditEvent are the patient's own."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from cloud.api.routes import fhir as fhir_routes
from cloud.twin import fhir
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, weight
from tests.cloud.api.conftest import TokenFactory, World
from tests.fhir_validator.medplum import Validate, medplum_validate  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


def _phd_patient(conn: psycopg.Connection, world: World) -> tuple[str, str, str]:
    """The own patient gets a cuff with a Bluetooth address, two flagged cuff readings (one with the clock
    corrected by the gateway) and a glucose reading; returns (patient, cuff uid, reading id corrected)."""
    patient = world.patients["own"]
    uid = "ble:" + ":".join(f"{b:02X}" for b in bytes.fromhex(fhir.resource_digest(patient)[:12]))
    conn.execute("INSERT INTO devices (uid, transport, profile, manufacturer, model) VALUES"
                 " (%s, 'ble', 'ble.blood_pressure', 'Acme', 'BP-9')", (uid,))
    conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)", (uid, patient))
    at = datetime.now(UTC) - timedelta(hours=3)
    moved = bp(uid, at, 150, 95, flags=["irregular_pulse", "cuff_too_loose"])
    ingest(conn, [moved, bp(uid, at - timedelta(hours=1), 121, 79)], patient)
    # The gateway corrected this one's time by the offset it measured (device clock 90 s fast).
    conn.execute("UPDATE readings SET clock_judgement = 'corrected', clock_offset_s = 90 WHERE id = %s", (moved.id,))
    conn.execute("INSERT INTO gateways (id, status) VALUES ('gw-test', %s) ON CONFLICT (id) DO NOTHING",
                 (json.dumps({"version": "rpm-gateway 9"}),))
    return patient, uid, moved.id


def test_observations_follow_the_phd_ig(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient, uid, moved = _phd_patient(conn, world)
    headers = world.headers["patient"]
    panel = _ok(client.get(f"/fhir/Observation/{moved}", headers=headers))
    assert fhir.PHD_COMPOUND_PROFILE in panel["meta"]["profile"] and fhir.BP_PROFILE in panel["meta"]["profile"]
    categories = [c["coding"][0] for c in panel["category"]]
    assert categories[0]["code"] == "vital-signs" and categories[1] == {
        "system": fhir.PHD_CATEGORY_SYSTEM, "code": "phd", "display": "PHD generated Observation"}
    dedup = [i for i in panel["identifier"] if i["system"] == fhir.CONDITIONAL_CREATE_SYSTEM]
    address = uid.removeprefix("ble:").replace(":", "")
    assert dedup == [{"system": fhir.CONDITIONAL_CREATE_SYSTEM,
                      "value": f"{address}-{patient}-{fhir.PATIENT_SYSTEM}-150020-{moved}"}]
    extensions = {e["url"]: e["valueReference"]["reference"] for e in panel["extension"]}
    assert extensions[fhir.GATEWAY_EXTENSION] == f"Device/{fhir.gateway_device_id('gw-test')}"
    assert all(any(c["system"] == fhir.MDC for c in comp["code"]["coding"]) for comp in panel["component"])
    # The clock correction, as the IG carries it: a coincident timestamp (device clock vs gateway clock).
    coincident = _ok(client.get(f"/fhir/{extensions[fhir.COINCIDENT_EXTENSION]}", headers=headers))
    assert coincident["meta"]["profile"] == [fhir.PHD_COINCIDENT_PROFILE]
    assert coincident["subject"]["reference"] == f"Device/{fhir.device_id(uid)}"
    gap = datetime.fromisoformat(coincident["valueDateTime"]) - datetime.fromisoformat(coincident["effectiveDateTime"])
    assert gap == timedelta(seconds=90)
    # The status bits: cuff too loose (bit 1) and irregular pulse (bit 2), derived from the panel.
    status = _ok(client.get(f"/fhir/Observation/{moved}-status", headers=headers))
    assert status["code"]["coding"][0]["code"] == "8410608" and status["meta"]["profile"] == [fhir.PHD_BITS_PROFILE]
    assert [c["code"]["coding"][0]["code"] for c in status["component"]] == ["8410608.1", "8410608.2"]
    assert status["derivedFrom"] == [{"reference": f"Observation/{moved}"}]
    # Glucose is laboratory + phd and claims no vital-signs profile.
    search = _ok(client.get("/fhir/Observation", params={"patient": patient, "code": "41653-7", "_count": 1},
                            headers=headers))
    glucose = search["entry"][0]["resource"]
    assert {c["coding"][0]["code"] for c in glucose["category"]} == {"laboratory", "phd"}
    assert glucose["meta"]["profile"] == [fhir.PHD_NUMERIC_PROFILE]
    # A PHD Device and a PHG Device.
    device = _ok(client.get(f"/fhir/Device/{fhir.device_id(uid)}", headers=headers))
    btmac = {"system": fhir.DEVICE_ID_TYPES, "code": "BTMAC", "display": "Bluetooth MAC address"}
    assert {"type": {"coding": [btmac]}, "system": fhir.BLUETOOTH_SYSTEM,
            "value": uid.removeprefix("ble:").replace(":", "-")} in device["identifier"]
    assert device["manufacturer"] == "Acme" and device["modelNumber"] == "BP-9" and "parent" not in device


def test_search_by_category_device_sort_and_bad_parameters(client: TestClient, world: World,
                                                          conn: psycopg.Connection) -> None:
    patient, uid, _ = _phd_patient(conn, world)
    headers = world.headers["patient"]
    lab = _ok(client.get("/fhir/Observation", params={"patient": patient, "category": "laboratory"}, headers=headers))
    assert lab["total"] == 6 and all("41653-7" in {c["code"] for c in e["resource"]["code"]["coding"]}
                                     for e in lab["entry"])
    mine = _ok(client.get("/fhir/Observation", params={"patient": patient, "device": f"Device/{fhir.device_id(uid)}",
                                                       "_sort": "date"}, headers=headers))
    # Two cuff readings: panel, pulse and (flagged one) status bits; oldest first.
    assert mine["total"] == 5 and all(e["resource"]["device"]["identifier"]["value"] == uid for e in mine["entry"])
    times = [e["resource"]["effectiveDateTime"] for e in mine["entry"]]
    assert times == sorted(times)
    for params in ({"category": "imaging"}, {"device": "Device/gw-00"}, {"_sort": "value"}, {"_cursor": "!!"},
                   {"_format": "xml"}):
        response = client.get("/fhir/Observation", params={"patient": patient, **params}, headers=headers)
        assert response.status_code == (406 if "_format" in params else 400), (params, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert _ok(client.get("/fhir/Observation", params={"patient": patient, "_format": "json", "_count": 1},
                          headers=headers))["entry"]


def test_a_generic_client_pages_by_date_and_follows_devices(client: TestClient, world: World,
                                                             conn: psycopg.Connection,
                                                             medplum_validate: Validate) -> None:  # noqa: F811
    patient, _, _ = _phd_patient(conn, world)
    headers = world.headers["patient"]
    statement = _ok(client.get("/fhir/metadata"))
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert {"search-type", "read"} <= {i["code"] for i in observation["interaction"]}
    assert {"patient", "date", "category", "device"} <= {p["name"] for p in observation["searchParam"]}
    url: str | None = f"/fhir/Observation?patient=Patient/{patient}&_sort=date&_count=3"
    seen: list[dict[str, Any]] = []
    pages = 0
    emitted: list[dict[str, Any]] = [statement]
    while url:
        page = _ok(client.get(url, headers=headers))
        emitted.append(page)
        assert len(page["entry"]) <= 3
        seen += [e["resource"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if pages and url:
            assert any(link["relation"] == "previous" for link in page["link"])
        pages += 1
    everything = _ok(client.get("/fhir/Observation", params={"patient": patient, "_sort": "date"}, headers=headers))
    assert [r["id"] for r in seen] == [e["resource"]["id"] for e in everything["entry"]]  # no gap, no repeat
    assert pages == -(-len(seen) // 3) and len(seen) == 6 + 7 * 2 + 6 + 2 * 2 + 1
    # Previous leads back to exactly the page before.
    second = _ok(client.get(f"/fhir/Observation?patient=Patient/{patient}&_sort=date&_count=3", headers=headers))
    nxt = next(link["url"] for link in second["link"] if link["relation"] == "next")
    back = next(link["url"] for link in _ok(client.get(nxt, headers=headers))["link"] if link["relation"] == "previous")
    assert [e["resource"]["id"] for e in _ok(client.get(back, headers=headers))["entry"]] == \
        [e["resource"]["id"] for e in second["entry"]]
    followed: dict[str, dict[str, Any]] = {}
    for resource in seen:
        references = [resource["device"]["reference"]] + [e["valueReference"]["reference"]
                                                         for e in resource.get("extension", [])]
        for reference in references:
            if reference not in followed:
                followed[reference] = _ok(client.get(f"/fhir/{reference}", headers=headers))
    kinds = {r.split("/")[0] for r in followed}
    assert kinds == {"Device", "Observation"} and any(r.startswith("Device/gw-") for r in followed)
    emitted += list(followed.values())
    emitted.append(_ok(client.get(f"/fhir/Patient/{patient}/$everything", headers=headers)))
    emitted.append(_ok(client.get("/fhir/Flag", params={"patient": patient}, headers=headers)))
    emitted.append(_ok(client.get("/fhir/Consent", params={"patient": patient}, headers=headers)))
    emitted.append(_ok(client.get("/fhir/AuditEvent", params={"patient": patient}, headers=headers)))
    emitted.append(client.get("/fhir/Observation", params={"patient": patient, "_format": "xml"},
                              headers=headers).json())
    problems = medplum_validate(emitted)
    assert problems == {}, {emitted[i]["resourceType"]: issues for i, issues in problems.items()}


def test_consent_and_audit_event_are_the_patients_own(client: TestClient, world: World, conn: psycopg.Connection,
                                                      auth: TokenFactory) -> None:
    patient = world.patients["consented"]
    mine = auth("patient", patient=patient)
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by, granted_at, expires_at)"
                 " VALUES (%s, %s, '{alerts}', %s, now() - interval '2 days', now() - interval '1 day')",
                 (patient, world.other_team, patient))
    bundle = _ok(client.get("/fhir/Consent", params={"patient": patient}, headers=mine))
    consents = {e["resource"]["organization"][0]["identifier"]["value"]: e["resource"] for e in bundle["entry"]}
    assert consents[world.team]["status"] == "active" and consents[world.other_team]["status"] == "inactive"
    scopes = [p["code"][0]["coding"][0]["code"] for p in consents[world.team]["provision"]["provision"]]
    assert scopes == ["readings", "alerts", "twin"]
    assert "end" in consents[world.other_team]["provision"]["period"]  # expired: when
    active = _ok(client.get("/fhir/Consent", params={"patient": patient, "status": "active"}, headers=mine))
    assert [e["resource"]["status"] for e in active["entry"]] == ["active"]
    read = _ok(client.get(f"/fhir/Consent/{consents[world.team]['id']}", headers=mine))
    assert read == consents[world.team]
    for role in ("clinician", "admin"):  # the patient's alone
        assert client.get("/fhir/Consent", params={"patient": patient}, headers=world.headers[role]).status_code == 403
        assert client.get(f"/fhir/Consent/{read['id']}", headers=world.headers[role]).status_code == 404
    assert client.get(f"/fhir/Consent/{read['id']}", headers=world.headers["patient"]).status_code == 404
    # The clinician's look at the patient is in the patient's AuditEvents, and nobody else's patient ids are.
    client.get(f"/fhir/Patient/{patient}", headers=world.headers["clinician"])
    client.get("/v1/patients", headers=world.headers["clinician"])
    events = _ok(client.get("/fhir/AuditEvent", params={"patient": patient, "_count": 2}, headers=mine))
    assert len(events["entry"]) == 2 and any(link["relation"] == "next" for link in events["link"])
    everything = _ok(client.get("/fhir/AuditEvent", params={"patient": patient, "_count": 1000}, headers=mine))
    texts = json.dumps(everything)
    assert world.patients["readings_only"] not in texts and world.patients["other"] not in texts
    looked = [e["resource"] for e in everything["entry"] if e["resource"]["subtype"][0]["code"]
              == "GET /fhir/Patient/{patient_id}"]
    assert looked and looked[0]["agent"][0]["who"]["identifier"]["value"].endswith("-dr")
    assert _ok(client.get(f"/fhir/AuditEvent/{looked[0]['id']}", headers=mine)) == looked[0]
    assert client.get(f"/fhir/AuditEvent/{looked[0]['id']}", headers=world.headers["patient"]).status_code == 404
    assert client.get("/fhir/AuditEvent", params={"patient": patient},
                      headers=world.headers["clinician"]).status_code == 403


def test_flag_search_and_read(client: TestClient, world: World) -> None:
    patient = world.patients["consented"]
    flags = _ok(client.get("/fhir/Flag", params={"patient": patient, "status": "active"},
                           headers=world.headers["clinician"]))
    assert len(flags["entry"]) == 1 and flags["entry"][0]["resource"]["status"] == "active"
    flag = flags["entry"][0]["resource"]
    assert _ok(client.get(f"/fhir/Flag/{flag['id']}", headers=world.headers["clinician"])) == flag
    none = _ok(client.get("/fhir/Flag", params={"patient": world.patients["readings_only"]},
                          headers=world.headers["clinician"]))
    assert none["entry"] == []  # no alerts scope: like a patient that does not exist
    assert client.get("/fhir/Flag", params={"patient": patient, "status": "maybe"},
                      headers=world.headers["clinician"]).status_code == 400
    assert client.get("/fhir/Flag/alert-x", headers=world.headers["clinician"]).status_code == 404


def test_a_search_longer_than_one_sql_batch_has_no_repeat(client: TestClient, conn: psycopg.Connection,
                                                          auth: TokenFactory) -> None:
    """The route reads readings 200 at a time (``_BATCH``): the reading a batch starts from (the last of the
    batch before) is found once, in either order, and a page stops nowhere near a batch edge."""
    patient = f"p-batch-{uuid.uuid4().hex[:8]}"
    uid = add_patient(conn, patient, kinds=("body_weight",))["body_weight"]
    start = datetime.now(UTC) - timedelta(days=30)
    ingest(conn, [weight(uid, start + timedelta(minutes=i), 70 + i / 100) for i in range(fhir_routes._BATCH + 5)],
           patient)
    headers = auth("patient", patient=patient)
    for sort in ("date", "-date"):
        body = _ok(client.get("/fhir/Observation", params={"patient": patient, "_sort": sort}, headers=headers))
        ids = [e["resource"]["id"] for e in body["entry"]]
        assert len(ids) == len(set(ids)) == fhir_routes._BATCH + 5 == body["total"], sort


@pytest.mark.parametrize("sql_batch", [fhir_routes.FLAG_LIMIT, 4])
def test_flag_search_pages_by_link_next_with_the_status_filter(client: TestClient, conn: psycopg.Connection,
                                                               auth: TokenFactory, sql_batch: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Status is judged from the alert's status and review together, so it is filtered after SQL: pages
    still hold _count matches each, in order, every alert once (also when alerts are read 4 at a time)."""
    monkeypatch.setattr(fhir_routes, "FLAG_LIMIT", sql_batch)
    patient = f"p-flags-{uuid.uuid4().hex[:8]}"
    add_patient(conn, patient, kinds=("blood_pressure",))
    with conn.transaction():
        for i in range(23):
            # Every third one resolved and reviewed (inactive), the rest resolved but awaiting review (active).
            reviewed = i % 3 == 0
            conn.execute(
                "INSERT INTO alerts (patient_id, rule_id, severity, status, message, opened_at, resolved_at,"
                " resolved_by, review_required, reviewed_at, reviewed_by)"
                " SELECT %s, id, severity, 'resolved', description, now() - make_interval(hours => %s),"
                " now() - make_interval(hours => %s), 'system', true, %s, %s FROM alert_rules WHERE id = 'bp_crisis'",
                (patient, 100 - i, 99 - i, datetime.now(UTC) if reviewed else None, "dr" if reviewed else None))
    headers = auth("patient", patient=patient)
    for status, expected in (("inactive", 8), ("active", 15), (None, 23)):
        params = {"patient": patient, "_count": "3", **({"status": status} if status else {})}
        url: str | None = "/fhir/Flag"
        seen: list[str] = []
        pages = 0
        while url:
            body = _ok(client.get(url, params=params if pages == 0 else None, headers=headers))
            pages += 1
            page = [e["resource"] for e in body["entry"]]
            assert len(page) == 3 or not any(link["relation"] == "next" for link in body["link"])
            assert status is None or {f["status"] for f in page} <= {status}
            seen += [f["id"] for f in page]
            url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        assert len(seen) == len(set(seen)) == expected, status
        numbers = [int(f.removeprefix("alert-")) for f in seen]
        assert numbers == sorted(numbers, reverse=True)  # newest first
        assert pages == -(-expected // 3)
    assert client.get("/fhir/Flag", params={"patient": patient, "_cursor": "x1"},
                      headers=headers).status_code == 400
