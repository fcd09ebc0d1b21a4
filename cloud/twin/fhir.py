"""FHIR R4 resources (as plain JSON dicts) for readings, alerts and patients.

Readings become ``Observation`` s following the FHIR R4 vital-signs profiles: LOINC codes and UCUM
units from the metric catalogue (specs/metrics.md), the blood-pressure panel 85354-9 with systolic
8480-6 and diastolic 8462-4 as components, the pulse of a cuff as its own heart-rate Observation,
``effectiveDateTime`` the corrected measurement time, ``device`` the measuring device's ``Device`` (its
id a digest of our uid, the uid kept as identifier; the gateway is that Device's ``parent``), device status
flags as notes (and as ``interpretation``-free text, since FHIR has no code for them). The IEEE 11073
MDC code is added beside LOINC as the HL7 Personal Health Device IG asks. Alerts become ``Flag`` s,
patients ``Patient`` s. Validated against ``fhir.resources`` (R4B models, identical for these
resources) in the tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from cloud.twin import queries
from gateway.metrics import LOINC_BP_PANEL, LOINC_OXYGEN_SATURATION, MDC_CODES, METRICS

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DEVICE_SYSTEM = "urn:rpm:device-uid"
GATEWAY_SYSTEM = "urn:rpm:gateway-id"
PROFILE_SYSTEM = "urn:rpm:device-profile"
SERIAL_SYSTEM = "urn:rpm:device-serial"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
DIGEST_LENGTH = 32
"""Hex digits of SHA-256 in a Device id; ``cloud.api.queries`` finds devices by the same digest in SQL."""
PATIENT_SYSTEM = "urn:rpm:patient-id"
RULE_SYSTEM = "urn:rpm:alert-rule"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_UNIT_DISPLAY = {"mm[Hg]": "mmHg", "/min": "beats/minute", "kg": "kg", "kg/m2": "kg/m2", "m": "m",
                 "mg/dL": "mg/dL", "kJ": "kJ", "%": "%", "Cel": "C"}
_DISPLAY = {
    "systolic": "Systolic blood pressure", "diastolic": "Diastolic blood pressure",
    "mean_arterial": "Mean blood pressure", "pulse_rate": "Heart rate", "heart_rate": "Heart rate",
    "glucose": "Glucose [Mass/volume] in Capillary blood by Glucometer", "body_weight": "Body weight",
    "bmi": "Body mass index (BMI) [Ratio]", "height": "Body height",
    "spo2": "Oxygen saturation in Arterial blood by Pulse oximetry",
    "spo2_pulse_rate": "Heart rate by Pulse oximetry", "body_temperature": "Body temperature",
}
# The FHIR vital-signs oxygen saturation profile asks for 2708-6; the PHD IG for 59408-5 (by pulse
# oximetry) beside it. Both are sent, 2708-6 first.
_EXTRA_LOINC = {"spo2": (LOINC_OXYGEN_SATURATION, "Oxygen saturation in Arterial blood")}
# Temperature Type (HTS 0x2A1D) -> SNOMED CT body structure, for body temperature's bodySite.
SNOMED = "http://snomed.info/sct"
BODY_SITES = {
    "armpit": ("91470000", "Axillary region structure"), "ear": ("117590005", "Ear structure"),
    "finger": ("7569003", "Finger structure"), "gastro_intestinal_tract": ("122865005", "Gastrointestinal tract"),
    "mouth": ("123851003", "Mouth region structure"), "rectum": ("34402009", "Rectum structure"),
    "toe": ("29707007", "Toe structure"), "tympanum": ("42859004", "Tympanic membrane structure"),
}
VITAL_PROFILES = {"body_weight": "http://hl7.org/fhir/StructureDefinition/bodyweight",
                   "bmi": "http://hl7.org/fhir/StructureDefinition/bmi",
                   "height": "http://hl7.org/fhir/StructureDefinition/bodyheight",
                   "pulse_rate": "http://hl7.org/fhir/StructureDefinition/heartrate",
                   "heart_rate": "http://hl7.org/fhir/StructureDefinition/heartrate",
                   "spo2": "http://hl7.org/fhir/StructureDefinition/oxygensat",
                   "spo2_pulse_rate": "http://hl7.org/fhir/StructureDefinition/heartrate",
                   "body_temperature": "http://hl7.org/fhir/StructureDefinition/bodytemp"}


def fhir_id(value: str) -> str:
    """Our ids as FHIR ids (``[A-Za-z0-9-.]{1,64}``): kept where valid, else a stable hash."""
    if _FHIR_ID.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


def resource_digest(value: str) -> str:
    """The stable part of a Device id: our device uids and gateway ids are not FHIR ids (``ble:aa:bb``)."""
    return hashlib.sha256(value.encode()).hexdigest()[:DIGEST_LENGTH]


def device_id(uid: str) -> str:
    return f"dev-{resource_digest(uid)}"


def gateway_device_id(gateway_id: str) -> str:
    return f"gw-{resource_digest(gateway_id)}"


def device_reference(uid: str) -> dict[str, Any]:
    return {"reference": f"Device/{device_id(uid)}", "identifier": {"system": DEVICE_SYSTEM, "value": uid},
            "display": uid}


def _profile_text(profile: str) -> str:
    """``ble.blood_pressure`` -> ``blood pressure (ble)``: the specifications give no MDC device codes."""
    transport, _, name = profile.partition(".")
    return f"{name.replace('_', ' ')} ({transport})" if name else profile


def device_resource(device: Mapping[str, Any], patient_id: str | None = None) -> dict[str, Any]:
    """A ``Device`` for a ``devices`` row (``cloud.api.queries.fhir_device``): the uid (and serial) as
    identifiers, type from the device profile, battery where the device reported it, the gateway it is
    bound to as ``parent``; ``patient`` only where the caller may see the one patient it is assigned to."""
    uid = device["uid"]
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(uid),
        "identifier": [{"system": DEVICE_SYSTEM, "value": uid}],
        "status": "active",
        "type": {"coding": [{"system": PROFILE_SYSTEM, "code": device["profile"]}],
                 "text": _profile_text(device["profile"])},
    }
    if device.get("serial"):
        resource["identifier"].append({"type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "SNO"}],
                                                "text": "serial number"},
                                       "system": SERIAL_SYSTEM, "value": device["serial"]})
        resource["serialNumber"] = device["serial"]
    if device.get("manufacturer"):
        resource["manufacturer"] = device["manufacturer"]
    if device.get("model"):
        resource["modelNumber"] = device["model"]
        resource["deviceName"] = [{"name": device["model"], "type": "model-name"}]
    if device.get("battery") is not None:
        resource["property"] = [{"type": {"text": "battery level"},
                                 "valueQuantity": [_quantity(device["battery"], "%")]}]
    if patient_id:
        resource["patient"] = {"reference": f"Patient/{fhir_id(patient_id)}"}
    if device.get("bound_gateway_id"):
        gateway = device["bound_gateway_id"]
        resource["parent"] = {"reference": f"Device/{gateway_device_id(gateway)}", "display": gateway}
    return resource


def gateway_resource(gateway_id: str) -> dict[str, Any]:
    """The ``Device`` for a gateway: the measuring devices bound to it name it as their ``parent``."""
    return {
        "resourceType": "Device",
        "id": gateway_device_id(gateway_id),
        "identifier": [{"system": GATEWAY_SYSTEM, "value": gateway_id}],
        "status": "active",
        "type": {"text": "personal health gateway"},
    }


def _iso(value: datetime | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": _UNIT_DISPLAY.get(unit, unit), "system": UCUM, "code": unit}


def _code(metric: str) -> dict[str, Any]:
    codings = [{"system": LOINC, "code": METRICS[metric].loinc, "display": _DISPLAY.get(metric, metric)}]
    if metric in _EXTRA_LOINC:
        code, display = _EXTRA_LOINC[metric]
        codings.insert(0, {"system": LOINC, "code": code, "display": display})
    if metric in MDC_CODES:
        codings.append({"system": MDC, "code": str(MDC_CODES[metric])})
    return {"coding": codings, "text": _DISPLAY.get(metric, metric)}


def _value(entry: Any) -> tuple[float | list[float], str | None]:
    if isinstance(entry, Mapping):
        return entry["value"], entry.get("unit")
    return entry, None


def _base(row: Mapping[str, Any], resource_id: str, category: str, profile: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"profile": [profile]},
        "identifier": [{"system": "urn:rpm:reading-id", "value": row["id"]}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}],
        "effectiveDateTime": _iso(row["measured_at"]),
        "device": device_reference(row["device_uid"]),
    }
    if row.get("patient_id"):
        resource["subject"] = {"reference": f"Patient/{fhir_id(row['patient_id'])}"}
    flags = [f for f in row.get("flags") or () if f]
    if flags:
        resource["note"] = [{"text": "device flags: " + ", ".join(flags)}]
    return resource


def observations_from_row(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All Observations for one reading row ``{id, patient_id, device_uid, kind, measured_at, flags,
    values: {metric: {value, unit} | number}}`` (see :func:`cloud.twin.queries`-style ``reading_row``)."""
    values = {m: _value(v) for m, v in row["values"].items() if m in METRICS and METRICS[m].loinc}
    out: list[dict[str, Any]] = []
    if row["kind"] == "blood_pressure" and "systolic" in values and "diastolic" in values:
        panel = _base(row, row["id"], "vital-signs", BP_PROFILE)
        panel["code"] = {"coding": [{"system": LOINC, "code": LOINC_BP_PANEL,
                                     "display": "Blood pressure panel with all children optional"},
                                    {"system": MDC, "code": str(MDC_CODES["blood_pressure"])}],
                         "text": "Blood pressure"}
        panel["component"] = [
            {"code": _code(m), "valueQuantity": _quantity(values[m][0], values[m][1] or METRICS[m].unit)}
            for m in ("systolic", "diastolic", "mean_arterial") if m in values
        ]
        out.append(panel)
        rest = [m for m in values if m == "pulse_rate"]
    else:
        rest = list(values)
    for metric in rest:
        value, unit = values[metric]
        if isinstance(value, list):
            continue
        category = "laboratory" if metric == "glucose" else "vital-signs"
        profile = VITAL_PROFILES.get(metric, VITAL_SIGNS_PROFILE)
        resource_id = row["id"] if not out and len(rest) == 1 else f"{row['id']}-{metric.replace('_', '-')}"
        observation = _base(row, resource_id, category, profile)
        observation["code"] = _code(metric)
        observation["valueQuantity"] = _quantity(value, unit or METRICS[metric].unit)
        site = row.get("body_site")
        if metric == "body_temperature" and site:
            observation["bodySite"] = _body_site(site)
        if out:
            observation["derivedFrom"] = [{"reference": f"Observation/{out[0]['id']}"}]
        out.append(observation)
    return out


def _body_site(site: str) -> dict[str, Any]:
    """The thermometer's Temperature Type as a bodySite: SNOMED CT where the type names a structure
    ("body", general, has none), always with the type as text."""
    text = site.replace("_", " ")
    if site in BODY_SITES:
        code, display = BODY_SITES[site]
        return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": text}
    return {"text": text}


def observation_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The primary Observation of a reading (the BP panel for a cuff reading)."""
    observations = observations_from_row(row)
    if not observations:
        raise ValueError(f"reading {row['id']} has no value with a LOINC code")
    return observations[0]


def flag_from_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Flag`` for an alert row (``cloud.alerts.service.get_alert``): active until it resolved and, where
    it needs a person's review, until it was reviewed; ``period.end`` is when the condition resolved."""
    period: dict[str, str] = {"start": _iso(alert["opened_at"])}
    if alert.get("resolved_at"):
        period["end"] = _iso(alert["resolved_at"])
    pending = alert.get("review_state") == "pending"
    return {
        "resourceType": "Flag",
        "id": f"alert-{alert['id']}",
        "identifier": [{"system": "urn:rpm:alert-id", "value": str(alert["id"])}],
        "status": "inactive" if alert["status"] == "resolved" and not pending else "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                  "code": "clinical", "display": "Clinical"}]}],
        "code": {"coding": [{"system": RULE_SYSTEM, "code": alert["rule_id"]}],
                 "text": f"[{alert['severity']}] {alert['message']}"
                         + (" (resolved; awaiting a clinician's review)" if pending and alert["status"] == "resolved"
                            else "")},
        "subject": {"reference": f"Patient/{fhir_id(alert['patient_id'])}"},
        "period": period,
    }


def patient_resource(patient: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Patient`` from a ``patients`` row."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": fhir_id(patient["id"]),
        "identifier": [{"system": PATIENT_SYSTEM, "value": patient["id"]}],
        "active": True,
    }
    if patient.get("display_name"):
        resource["name"] = [{"text": patient["display_name"]}]
    if patient.get("sex"):
        resource["gender"] = patient["sex"]
    if patient.get("birth_date"):
        birth = patient["birth_date"]
        resource["birthDate"] = birth.isoformat() if isinstance(birth, date) else str(birth)
    return resource


def reading_row(conn: Any, reading_id: str) -> dict[str, Any] | None:
    """A stored reading with its values, in the shape :func:`observations_from_row` takes."""
    return queries.reading_with_values(conn, reading_id)
