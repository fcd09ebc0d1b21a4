"""FHIR ``Device`` resources: one per measuring device and one per gateway, referenced from Observations
and from each other, readable like the readings they made, validated with fhir.resources (R4B)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation

from cloud.twin import fhir
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


def _get(client: TestClient, world: World, path: str, role: str = "clinician", **params: Any) -> Any:
    return client.get(path, params=params or None, headers=world.headers[role])


def _read(client: TestClient, world: World, reference: str, role: str = "clinician") -> dict[str, Any]:
    response = _get(client, world, f"/fhir/{reference}", role)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    Device.model_validate(body)
    return body


def test_an_observation_leads_to_its_device_and_the_gateway(
    client: TestClient, world: World, conn: psycopg.Connection
) -> None:
    patient = world.patients["consented"]
    bound = f"gw-{uuid.uuid4().hex[:10]}"  # as ingest binds a device on first contact
    conn.execute(
        "UPDATE devices SET bound_gateway_id = %s WHERE uid = %s", (bound, world.devices["consented"]["blood_pressure"])
    )
    # Ingest records every gateway that sends (cloud/ingest/queries.py UPSERT_GATEWAYS) with its last status;
    # the test's ingest writes readings only, so the row is written here.
    conn.execute("INSERT INTO gateways (id, status) VALUES ('gw-test', %s) ON CONFLICT (id) DO UPDATE"
                 " SET status = excluded.status", (json.dumps({"version": "rpm-gateway 1.4.2"}),))
    search = _get(client, world, "/fhir/Observation", patient=f"Patient/{patient}", code="85354-9").json()
    resource = search["entry"][0]["resource"]
    observation = Observation.model_validate(resource)
    uid = world.devices["consented"]["blood_pressure"]
    assert observation.device.identifier.value == uid
    device = _read(client, world, observation.device.reference)
    assert device["id"] == fhir.device_id(uid) and device["identifier"][0] == {
        "system": fhir.DEVICE_SYSTEM,
        "value": uid,
    }
    assert device["patient"] == {"reference": f"Patient/{patient}"}
    assert device["type"]["coding"][0]["code"] == "ble.blood_pressure"
    assert {"system": fhir.MDC, "code": "65573", "display": "MDC_MOC_VMS_MDS_SIMP"} in device["type"]["coding"]
    assert device["specialization"][0]["systemType"]["coding"][0]["code"] == "528391"
    assert "parent" not in device  # PhdDevice forbids one: the Observation names its gateway
    assert device["property"][0]["valueQuantity"][0] == {"value": 80, "unit": "%", "system": fhir.UCUM, "code": "%"}
    # The PHD IG's gatewayDevice extension: the gateway that relayed this reading (the test ingest's "gw-test").
    (gateway_ref,) = [e["valueReference"]["reference"] for e in resource["extension"]
                      if e["url"] == fhir.GATEWAY_EXTENSION]
    gateway = _read(client, world, gateway_ref)
    assert gateway["identifier"] == [{"system": fhir.GATEWAY_SYSTEM, "value": "gw-test"}]
    assert gateway["type"]["text"] == "personal health gateway" and gateway["type"]["coding"][0]["code"] == "531981"
    assert gateway["meta"]["profile"] == [fhir.PHG_DEVICE_PROFILE]  # its software version is known
    assert gateway["version"][0]["value"] == "rpm-gateway 1.4.2"
    # The gateway the device is bound to now is readable too.
    assert _read(client, world, f"Device/{fhir.gateway_device_id(bound)}")["identifier"][0]["value"] == bound


def test_serial_manufacturer_and_model_are_carried(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    uid = world.devices["own"]["glucose"]
    conn.execute("UPDATE devices SET serial = 'SN-0042', manufacturer = 'Acme', model = 'GM-7' WHERE uid = %s", (uid,))
    device = _read(client, world, f"Device/{fhir.device_id(uid)}", role="patient")
    assert device["serialNumber"] == "SN-0042" and device["manufacturer"] == "Acme"
    assert device["modelNumber"] == "GM-7" and device["deviceName"] == [{"name": "GM-7", "type": "model-name"}]
    serial = [i for i in device["identifier"] if i["system"] == fhir.SERIAL_SYSTEM]
    assert serial and serial[0]["value"] == "SN-0042" and serial[0]["type"]["coding"][0]["code"] == "SNO"


def test_device_search_by_patient(client: TestClient, world: World) -> None:
    patient = world.patients["readings_only"]
    response = _get(client, world, "/fhir/Device", patient=f"Patient/{patient}")
    assert response.status_code == 200, response.text
    bundle = Bundle.model_validate(response.json())
    ids = {entry.resource.id for entry in bundle.entry}
    assert ids == {fhir.device_id(uid) for uid in world.devices["readings_only"].values()}
    assert all(entry.fullUrl.endswith(f"/fhir/Device/{entry.resource.id}") for entry in bundle.entry)
    hidden = _get(client, world, "/fhir/Device", patient=world.patients["other"]).json()
    assert hidden["total"] == 0 and hidden["entry"] == []


def test_a_device_or_gateway_of_a_hidden_patient_is_not_found(
    client: TestClient, world: World, conn: psycopg.Connection
) -> None:
    other = world.devices["other"]["blood_pressure"]
    missing = _get(client, world, f"/fhir/Device/{fhir.device_id('ble:no-such-device')}")
    hidden = _get(client, world, f"/fhir/Device/{fhir.device_id(other)}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() and hidden.headers["content-type"].startswith("application/fhir+json")
    assert _get(client, world, "/fhir/Device/not-a-device-id").status_code == 404
    gateway = f"gw-{uuid.uuid4().hex[:10]}"
    conn.execute("UPDATE devices SET bound_gateway_id = %s WHERE uid = %s", (gateway, other))
    gateway_id = fhir.gateway_device_id(gateway)
    assert _get(client, world, f"/fhir/Device/{gateway_id}").status_code == 404
    assert _get(client, world, f"/fhir/Device/{gateway_id}", role="admin").status_code == 404


def test_a_moved_device_stays_readable_without_its_new_patient(
    client: TestClient, world: World, conn: psycopg.Connection
) -> None:
    """The care team of a patient the device measured still follows their Observations to it, but does
    not learn whom it belongs to now."""
    uid = world.devices["consented"]["body_weight"]
    conn.execute("UPDATE device_assignments SET valid_to = now() WHERE device_uid = %s", (uid,))
    conn.execute(
        "INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)", (uid, world.patients["other"])
    )
    device = _read(client, world, f"Device/{fhir.device_id(uid)}")
    assert "patient" not in device
    searched = _get(client, world, "/fhir/Device", patient=world.patients["consented"]).json()
    moved = [e["resource"] for e in searched["entry"] if e["resource"]["id"] == fhir.device_id(uid)]
    assert moved and "patient" not in moved[0]


def test_everything_resolves_every_device_reference_inside_the_bundle(
    client: TestClient, world: World, conn: psycopg.Connection
) -> None:
    patient, devices = world.patients["own"], world.devices["own"]
    gateway = f"gw-{uuid.uuid4().hex[:10]}"
    conn.execute("UPDATE devices SET bound_gateway_id = %s WHERE uid = ANY(%s)", (gateway, list(devices.values())))
    body = _get(client, world, f"/fhir/Patient/{patient}/$everything", role="patient").json()
    Bundle.model_validate(body)
    held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"]}
    resources = [e["resource"] for e in body["entry"]]
    references = [r["device"]["reference"] for r in resources if r["resourceType"] == "Observation"]
    references += [r["parent"]["reference"] for r in resources if r["resourceType"] == "Device" and "parent" in r]
    assert references and set(references) <= held
    assert f"Device/{fhir.gateway_device_id(gateway)}" in held
