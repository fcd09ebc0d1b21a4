"""FHIR R4 resources (as plain JSON dicts) for readings, alerts, patients, consents and audit rows.

Readings become ``Observation`` s following the FHIR R4 vital-signs profiles (LOINC codes and UCUM units
from the metric catalogue, specs/metrics.md; the blood-pressure panel 85354-9 with systolic 8480-6 and
diastolic 8462-4 as components, the pulse of a cuff as its own heart-rate Observation) **and** the HL7
Personal Health Device IG, STU 2 (v2.0.0, R4: http://hl7.org/fhir/uv/phd/), whose profiles, read from
the IG's source (github.com/HL7/phd, tag 2.0.0, ``input/fsh``), say:

- ``PhdBaseObservation`` (http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation): category
  ``http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories#phd`` (beside vital-signs where that
  profile applies); the gateway as ``http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice``
  (1..1, the PHG ``Device``); ``device`` the PHD; the conditional-create identifier (system
  ``…/PhdBaseObservation``, value device-patient-type-timestamp, built here from the reading id, which is
  the device's own record identity: its sequence number or its own raw time and values, never the
  corrected time, exactly the property the IG asks of that timestamp part); a ``CoincidentTimeStampReference``
  extension (http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference) to a
  ``PhdCoincidentTimeStampObservation`` wherever the gateway moved the device's time (IG "Timestamp:
  effective[x]": "When the PHG modifies an Observation's timestamp … it shall also generate a Coincident
  Timestamp observation"); Measurement-Status as the IG's table maps it (questionable, calibrating and
  early-estimate as ``interpretation`` from http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status,
  test data as ``meta.security`` HTEST, invalid and not-available as ``dataAbsentReason``).
- ``PhdNumericObservation`` / ``PhdCompoundNumericObservation`` (the BP panel: every component with its
  MDC code); glucose is ``laboratory`` + ``phd`` and claims no vital-signs profile.
- Device-specific status bits (BLE Blood Pressure Measurement Status, Glucose Sensor Status Annunciation,
  PLX device and sensor status) as a ``PhdBitsEnumerationObservation`` (the IG's ``bpm-status`` example):
  code MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS 8410608 (glucose 8417752, pulse oximetry 150604), one
  ``component`` per set bit coded ``http://terminology.hl7.org/CodeSystem/ASN1ToHL7#<code>.<bit>``,
  ``derivedFrom`` the measurement. Flags the IG has no code for stay a ``note``, as before.
- ``PhdDevice`` (http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice): type MDC_MOC_VMS_MDS_SIMP 65573,
  the Bluetooth address as a ``BTMAC`` identifier (system http://hl7.org/fhir/sid/eui-48/bluetooth),
  ``specialization`` with the MDC_DEV_SPEC_PROFILE_* code, no ``parent`` (the profile forbids one: the
  link to the gateway is the Observation's gatewayDevice extension). The profile is *not claimed*: it
  requires ``version`` (firmware/software) and the specialization's version, which the wire contract does
  not carry from the gateway.
- ``PhgDevice`` (http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice): type MDC_MOC_VMS_MDS_AHD 531981,
  the specializations the gateway software decodes, its software version (MDC_ID_PROD_SPEC_SW 531975)
  from its last status; the profile is claimed only when that version is known.

Alerts become ``Flag`` s, patients ``Patient`` s, consents ``Consent`` s, audit rows ``AuditEvent`` s.
Everything is validated against ``fhir.resources`` (R4B models, identical for these resources) and a
second validator (@medplum/core, tests/fhir_validator) in the tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cloud.twin import queries
from gateway.metrics import (
    BP_FLAGS,
    GLUCOSE_FLAGS,
    LOINC_BP_PANEL,
    LOINC_OXYGEN_SATURATION,
    MDC_CODES,
    METRICS,
    PULSE_OXIMETRY_FLAGS,
)

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

# --- HL7 Personal Health Device IG, STU 2 (v2.0.0): canonical URLs and codes from its FSH sources ---------
PHD_BASE = "http://hl7.org/fhir/uv/phd"
PHD_CATEGORY_SYSTEM = f"{PHD_BASE}/CodeSystem/PhdObservationCategories"
PHD_BASE_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdBaseObservation"
PHD_NUMERIC_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdNumericObservation"
PHD_COMPOUND_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdCompoundNumericObservation"
PHD_BITS_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdBitsEnumerationObservation"
PHD_COINCIDENT_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdCoincidentTimeStampObservation"
PHD_DEVICE_PROFILE = f"{PHD_BASE}/StructureDefinition/PhdDevice"
PHG_DEVICE_PROFILE = f"{PHD_BASE}/StructureDefinition/PhgDevice"
COINCIDENT_EXTENSION = f"{PHD_BASE}/StructureDefinition/CoincidentTimeStampReference"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
CONDITIONAL_CREATE_SYSTEM = PHD_BASE_PROFILE
"""The IG fixes the de-duplication identifier's system to the base profile's URL (identifier[conditionalCreate])."""
ASN1_SYSTEM = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
MEASUREMENT_STATUS_SYSTEM = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
DEVICE_ID_TYPES = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
BLUETOOTH_SYSTEM = "http://hl7.org/fhir/sid/eui-48/bluetooth"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
READING_SYSTEM = "urn:rpm:reading-id"
MDC_PHD = ("65573", "MDC_MOC_VMS_MDS_SIMP")
MDC_PHG = ("531981", "MDC_MOC_VMS_MDS_AHD")
MDC_SOFTWARE_VERSION = ("531975", "MDC_ID_PROD_SPEC_SW")
MDC_TIME_ABS = ("67975", "MDC_ATTR_TIME_ABS")
"""The clock type of every supported device: a wall clock without offset (BLE Date Time, a meter's clock)."""
# MDC observation types the metric catalogue does not carry (IEEE 11073-10101; the IG's mdc-1 invariant
# asks for an MDC coding on every PHD Observation).
_MDC_MORE = {"body_weight": "188736", "bmi": "188752", "height": "188740", "glucose": "160184",
             "pulse_rate": "149546", "heart_rate": "147842"}
# The device specialisation of each device profile (ValueSet DeviceTypes11073MDC). The BLE heart-rate
# and the ANT+ heart-rate monitors have no 11073 specialisation, so none is claimed for them.
SPECIALIZATIONS = {
    "blood_pressure": ("528391", "MDC_DEV_SPEC_PROFILE_BP", "Blood pressure monitor"),
    "glucose": ("528401", "MDC_DEV_SPEC_PROFILE_GLUCOSE", "Glucose meter"),
    "weight_scale": ("528399", "MDC_DEV_SPEC_PROFILE_SCALE", "Weight scale"),
    "pulse_oximeter": ("528388", "MDC_DEV_SPEC_PROFILE_PULS_OXIM", "Pulse oximeter"),
    "thermometer": ("528392", "MDC_DEV_SPEC_PROFILE_TEMP", "Thermometer"),
}
_PROFILE_SPECIALIZATION = {"ble.blood_pressure": "blood_pressure", "ble.glucose": "glucose",
                           "ble.weight_scale": "weight_scale", "ble.pulse_oximeter": "pulse_oximeter",
                           "ble.thermometer": "thermometer", "serial.astm": "glucose",
                           "serial.ad_scale": "weight_scale"}
# Status bits per device family (ASN1ToHL7 CodeSystem, IG 2.0.0): our flag -> bit, under the family's MDC code.
_BITS: dict[str, tuple[str, str, dict[str, tuple[int, str]]]] = {
    "blood_pressure": ("8410608", "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS", {
        "body_movement": (0, "body-movement"), "cuff_too_loose": (1, "cuff-too-loose"),
        "irregular_pulse": (2, "irregular-pulse"), "pulse_rate_above_range": (3, "pulse-over-range-limit"),
        "pulse_rate_below_range": (4, "pulse-under-range-limit"), "improper_position": (5, "improper-body-position")}),
    "glucose": ("8417752", "Glucose meter sensor status annunciation", {
        "device_battery_low": (0, "device-battery-low"), "sensor_malfunction": (1, "sensor-malfunction"),
        "sample_size_insufficient": (2, "sensor-sample-size-insufficient"),
        "strip_insertion_error": (3, "sensor-strip-insertion"),
        "strip_type_incorrect": (4, "sensor-strip-type-incorrect"),
        "result_above_range": (5, "sensor-result-too-high"), "result_below_range": (6, "sensor-result-too-low"),
        "temperature_too_high": (7, "sensor-temp-too-high"), "temperature_too_low": (8, "sensor-temp-too-low"),
        "strip_pulled_too_soon": (9, "sensor-read-interrupt"), "device_fault": (10, "device-gen-fault")}),
    "pulse_oximetry": ("150604", "MDC_PULS_OXIM_DEV_STATUS", {
        "sensor_disconnected": (0, "sensor-disconnected"), "sensor_malfunction": (1, "sensor-malfunction"),
        "sensor_displaced": (2, "sensor-displaced"), "unknown_sensor_connected": (3, "sensor-unsupported"),
        "sensor_unconnected_to_user": (4, "sensor-off"), "sensor_interference": (5, "sensor-interference"),
        "signal_analysis_ongoing": (6, "signal-searching"), "questionable_pulse": (7, "signal-pulse-questionable"),
        "non_pulsatile_signal": (8, "signal-non-pulsatile"), "erratic_signal": (9, "signal-erratic"),
        "low_perfusion": (10, "signal-low-perfusion"), "poor_signal": (11, "signal-poor"),
        "inadequate_signal": (12, "signal-inadequate"),
        "signal_processing_irregularity": (13, "signal-processing-irregularity"),
        "equipment_malfunction": (14, "device-equipment-malfunction")}),
}
assert all(set(bits) <= set(flags) for (_, _, bits), flags in
           zip(_BITS.values(), (BP_FLAGS, GLUCOSE_FLAGS, PULSE_OXIMETRY_FLAGS), strict=True))
# The IG's Measurement-Status table (PhdBaseObservation notes): flag -> interpretation code.
_INTERPRETATION = {"questionable_measurement": "questionable", "calibration_ongoing": "calibration-ongoing",
                   "early_estimate": "early-indication"}
_TEST_DATA = {"testing_data", "demonstration_data"}
_NO_VALUE = {"invalid_measurement": "error", "measurement_unavailable": "not-performed"}

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


def _mdc(code: tuple[str, str], text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": MDC, "code": code[0], "display": code[1]}]}
    if text:
        concept["text"] = text
    return concept


def bluetooth_address(uid: str) -> str | None:
    """A ``ble:`` uid's address as the IG writes an EUI-48 (``00-1C-05-FF-E8-74``), or None."""
    transport, _, address = uid.partition(":")
    octets = address.split(":")
    if transport != "ble" or len(octets) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{2}", o) for o in octets):
        return None
    return "-".join(o.upper() for o in octets)


def _specialization(profile: str) -> list[dict[str, Any]]:
    key = _PROFILE_SPECIALIZATION.get(profile)
    if key is None:
        return []
    code, display, text = SPECIALIZATIONS[key]
    return [{"systemType": _mdc((code, display), text)}]


def device_resource(device: Mapping[str, Any], patient_id: str | None = None) -> dict[str, Any]:
    """A ``Device`` for a ``devices`` row (``cloud.api.queries.fhir_device``), mapped as the PHD IG's
    PhdDevice: our uid (and the Bluetooth address, and the serial) as identifiers, type 65573 beside our
    device profile, the MDC specialisation, manufacturer, model, battery where the device reported it;
    ``patient`` only where the caller may see the one patient it is assigned to. No ``parent``: PhdDevice
    forbids one; an Observation names its gateway (gatewayDevice extension)."""
    uid = device["uid"]
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(uid),
        "identifier": [{"system": DEVICE_SYSTEM, "value": uid}],
        "status": "active",
        "type": {"coding": [{"system": PROFILE_SYSTEM, "code": device["profile"]},
                            {"system": MDC, "code": MDC_PHD[0], "display": MDC_PHD[1]}],
                 "text": _profile_text(device["profile"])},
    }
    address = bluetooth_address(uid)
    if address:
        resource["identifier"].append({"type": {"coding": [{"system": DEVICE_ID_TYPES, "code": "BTMAC",
                                                            "display": "Bluetooth MAC address"}]},
                                       "system": BLUETOOTH_SYSTEM, "value": address})
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
    specialization = _specialization(device["profile"])
    if specialization:
        resource["specialization"] = specialization
    if device.get("battery") is not None:
        # The IG reports battery as an Observation (MDC_ATTR_VAL_BATT_CHARGE); we know only the last level the
        # gateway saw, so it stays a property of the device.
        resource["property"] = [{"type": {"text": "battery level"},
                                 "valueQuantity": [_quantity(device["battery"], "%")]}]
    if patient_id:
        resource["patient"] = {"reference": f"Patient/{fhir_id(patient_id)}"}
    return resource


def gateway_resource(gateway_id: str, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``Device`` for a gateway, mapped as the IG's PhgDevice: type 531981, the specialisations the gateway
    software decodes and, from its last status (``gateways.status``), its software version; the profile is
    claimed only with that version (PhgDevice requires one)."""
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": gateway_device_id(gateway_id),
        "identifier": [{"system": GATEWAY_SYSTEM, "value": gateway_id}],
        "status": "active",
        "type": {"coding": [{"system": MDC, "code": MDC_PHG[0], "display": MDC_PHG[1]}],
                 "text": "personal health gateway"},
        "specialization": [{"systemType": _mdc((code, display), text)}
                           for code, display, text in SPECIALIZATIONS.values()],
    }
    version = (status or {}).get("version")
    if isinstance(version, str) and version:
        resource["version"] = [{"type": _mdc(MDC_SOFTWARE_VERSION, "Software revision"), "value": version}]
        resource["meta"] = {"profile": [PHG_DEVICE_PROFILE]}
    return resource


def _iso(value: datetime | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": _UNIT_DISPLAY.get(unit, unit), "system": UCUM, "code": unit}


def _code(metric: str) -> dict[str, Any]:
    codings = [{"system": LOINC, "code": METRICS[metric].loinc, "display": _DISPLAY.get(metric, metric)}]
    if metric in _EXTRA_LOINC:
        code, display = _EXTRA_LOINC[metric]
        codings.insert(0, {"system": LOINC, "code": code, "display": display})
    mdc = _mdc_code(metric)
    if mdc:
        codings.append({"system": MDC, "code": mdc})
    return {"coding": codings, "text": _DISPLAY.get(metric, metric)}


def _mdc_code(metric: str) -> str | None:
    return str(MDC_CODES[metric]) if metric in MDC_CODES else _MDC_MORE.get(metric)


def _value(entry: Any) -> tuple[float | list[float], str | None]:
    if isinstance(entry, Mapping):
        return entry["value"], entry.get("unit")
    return entry, None


def _from_phd(row: Mapping[str, Any]) -> bool:
    """Whether a PHD measured it: a reading typed in by hand (``entry_method`` manual) is not PHD-generated."""
    return row.get("entry_method", "device") != "manual"


def _phd_conformant(row: Mapping[str, Any]) -> bool:
    """The PHD profiles need the gateway (gatewayDevice 1..1): rows without ``gateway_id`` (a caller's own
    query, such as the bulk export's) keep every PHD element they can but claim no PHD profile."""
    return _from_phd(row) and bool(row.get("gateway_id"))


def coincident_id(reading_id: str) -> str:
    return f"cts-{reading_id}"


def _corrected(row: Mapping[str, Any]) -> bool:
    """Whether the gateway moved the device's own time (so the IG asks for a Coincident Timestamp)."""
    return row.get("clock_judgement") in ("corrected", "gateway") and bool(row.get("gateway_id")) \
        and row.get("received_at") is not None


def conditional_create_value(row: Mapping[str, Any], mdc_type: str | None) -> str:
    """The IG's de-duplication identifier, *device-patient-type-timestamp* (PhdBaseObservation notes,
    "Conditional-create Identifier"): the Bluetooth address in capitals without dashes (else our uid), the
    patient's identifier value and system, the MDC type, and for the timestamp part the reading id: it is
    made from the device's own record identity (sequence number, or its raw time and values), never the
    corrected time, so the same record read again, by any gateway, gives the same identifier."""
    uid = row["device_uid"]
    device = (bluetooth_address(uid) or uid).replace("-", "")
    patient = f"{row['patient_id']}-{PATIENT_SYSTEM}" if row.get("patient_id") else "unassigned"
    return f"{device}-{patient}-{mdc_type or 'unknown'}-{row['id']}"


def _base(row: Mapping[str, Any], resource_id: str, category: str | None, profile: str | None,
          phd_profile: str | None = None, mdc_type: str | None = None) -> dict[str, Any]:
    profiles = [p for p in (profile, phd_profile if _phd_conformant(row) else None) if p]
    categories = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}] if category else []
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"profile": profiles},
        "identifier": [{"system": READING_SYSTEM, "value": row["id"]}],
        "status": "final",
        "category": categories,
        "effectiveDateTime": _iso(row["measured_at"]),
        "device": device_reference(row["device_uid"]),
    }
    if not profiles:
        del resource["meta"]
    if _from_phd(row):
        resource["category"].append({"coding": [{"system": PHD_CATEGORY_SYSTEM, "code": "phd",
                                                 "display": "PHD generated Observation"}]})
        resource["identifier"].append({"system": CONDITIONAL_CREATE_SYSTEM,
                                       "value": conditional_create_value(row, mdc_type)})
    if not resource["category"]:
        del resource["category"]
    extensions = []
    if row.get("gateway_id"):
        extensions.append({"url": GATEWAY_EXTENSION,
                           "valueReference": {"reference": f"Device/{gateway_device_id(row['gateway_id'])}",
                                              "display": row["gateway_id"]}})
    if _corrected(row):
        extensions.append({"url": COINCIDENT_EXTENSION,
                           "valueReference": {"reference": f"Observation/{coincident_id(row['id'])}"}})
    if extensions:
        resource["extension"] = extensions
    if row.get("patient_id"):
        resource["subject"] = {"reference": f"Patient/{fhir_id(row['patient_id'])}"}
    flags = [f for f in row.get("flags") or () if f]
    notes = ["device flags: " + ", ".join(flags)] if flags else []
    if not _from_phd(row):
        notes.append("entered by hand")  # the IG's "Manually-entered" status: a note
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    _measurement_status(resource, set(flags))
    return resource


def _measurement_status(resource: dict[str, Any], flags: set[str]) -> None:
    """The IG's Measurement-Status mapping (PhdBaseObservation notes, "Measurement Status")."""
    codes = sorted(_INTERPRETATION[f] for f in flags & set(_INTERPRETATION))
    if codes:
        resource["interpretation"] = [{"coding": [{"system": MEASUREMENT_STATUS_SYSTEM, "code": c}], "text": c}
                                      for c in codes]
    if "early_estimate" in flags:
        resource["status"] = "preliminary"
    if flags & _TEST_DATA:
        resource.setdefault("meta", {})["security"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}]


def _without_value(resource: dict[str, Any], flags: set[str]) -> None:
    """Invalid or not-available: ``dataAbsentReason`` instead of the value (and entered-in-error if invalid)."""
    for flag, reason in _NO_VALUE.items():
        if flag in flags:
            resource.pop("valueQuantity", None)
            resource["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": reason}]}
            if flag == "invalid_measurement":
                resource["status"] = "entered-in-error"
            return


def observations_from_row(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The measurement Observations for one reading row ``{id, patient_id, device_uid, kind, measured_at,
    flags, values: {metric: {value, unit} | number}}`` (see :func:`cloud.twin.queries`-style ``reading_row``),
    with, where the row has them, ``gateway_id``, ``clock_judgement``, ``received_at`` and ``entry_method``
    (the PHD elements). The IG's companion resources (status bits, coincident timestamp) are
    :func:`phd_companions`; the number and order of these stays one per value (a cuff: panel, pulse)."""
    values = {m: _value(v) for m, v in row["values"].items() if m in METRICS and METRICS[m].loinc}
    flags = {f for f in row.get("flags") or () if f}
    out: list[dict[str, Any]] = []
    if row["kind"] == "blood_pressure" and "systolic" in values and "diastolic" in values:
        bp_code = str(MDC_CODES["blood_pressure"])
        panel = _base(row, row["id"], "vital-signs", BP_PROFILE, PHD_COMPOUND_PROFILE, bp_code)
        panel["code"] = {"coding": [{"system": LOINC, "code": LOINC_BP_PANEL,
                                     "display": "Blood pressure panel with all children optional"},
                                    {"system": MDC, "code": bp_code}],
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
        # Glucose is a laboratory result, not a vital sign: it claims the PHD profile only (issue 22).
        category = "laboratory" if metric == "glucose" else "vital-signs"
        profile = None if metric == "glucose" else VITAL_PROFILES.get(metric, VITAL_SIGNS_PROFILE)
        resource_id = row["id"] if not out and len(rest) == 1 else f"{row['id']}-{metric.replace('_', '-')}"
        observation = _base(row, resource_id, category, profile, PHD_NUMERIC_PROFILE, _mdc_code(metric))
        observation["code"] = _code(metric)
        observation["valueQuantity"] = _quantity(value, unit or METRICS[metric].unit)
        site = row.get("body_site")
        if metric == "body_temperature" and site:
            observation["bodySite"] = _body_site(site)
        if out:
            observation["derivedFrom"] = [{"reference": f"Observation/{out[0]['id']}"}]
        _without_value(observation, flags)
        out.append(observation)
    return out


def status_observation(row: Mapping[str, Any], measured: Mapping[str, Any]) -> dict[str, Any] | None:
    """The device's status bits for this reading as a PhdBitsEnumerationObservation (the IG's bpm-status
    example), ``derivedFrom`` the measurement; None when no flag of the reading has an ASN1ToHL7 bit."""
    family = "pulse_oximetry" if row["kind"] == "pulse_oximetry" else row["kind"]
    if family not in _BITS:
        return None
    code, display, bits = _BITS[family]
    set_bits = sorted(bits[f] for f in {f for f in row.get("flags") or () if f} if f in bits)
    if not set_bits:
        return None
    resource = _base({**row, "flags": []}, f"{row['id']}-status", None, None, PHD_BITS_PROFILE, code)
    resource["code"] = {"coding": [{"system": MDC, "code": code, "display": display}], "text": display}
    resource["component"] = [{"code": {"coding": [{"system": ASN1_SYSTEM, "code": f"{code}.{bit}", "display": name}]},
                              "valueBoolean": True} for bit, name in set_bits]
    resource["derivedFrom"] = [{"reference": f"Observation/{measured['id']}"}]
    return resource


def coincident_time_stamp(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The PhdCoincidentTimeStampObservation for a reading whose time the gateway moved (clock judgement
    ``corrected``: the device's time shifted by the offset measured at connect; ``gateway``: the device's time
    unusable, the gateway's receive time used). ``effectiveDateTime`` is the gateway's time (when it
    received the reading), ``valueDateTime`` the device's clock at that instant (gateway time + offset), or,
    where the device had no usable time, ``dataAbsentReason`` unknown (the profile's TimeFault slice).
    Subject the PHD, device the PHG. One per reading: the cloud does not keep the gateway's connections."""
    if not _corrected(row):
        return None
    received = row["received_at"]
    received = received if isinstance(received, datetime) else datetime.fromisoformat(str(received))
    received = received if received.tzinfo else received.replace(tzinfo=UTC)
    gateway = gateway_device_id(row["gateway_id"])
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": coincident_id(row["id"]),
        "meta": {"profile": [PHD_COINCIDENT_PROFILE]},
        "extension": [{"url": GATEWAY_EXTENSION, "valueReference": {"reference": f"Device/{gateway}"}}],
        "status": "final",
        "code": _mdc(MDC_TIME_ABS, "Device clock (absolute time)"),
        "subject": {"reference": f"Device/{device_id(row['device_uid'])}"},
        "effectiveDateTime": received.isoformat(),
        "device": {"reference": f"Device/{gateway}"},
    }
    offset = row.get("clock_offset_s")
    if row.get("clock_judgement") == "corrected" and offset is not None:
        resource["valueDateTime"] = (received + timedelta(seconds=float(offset))).isoformat()
    else:
        resource["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "unknown"}],
                                        "text": "the device's clock was unset or implausible"}
    return resource


def phd_companions(row: Mapping[str, Any], observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The IG's companions of a reading's Observations: its status-bits Observation (subject the patient)
    and its coincident timestamp (subject the device), where it has them."""
    out = []
    if observations:
        status = status_observation(row, observations[0])
        if status:
            out.append(status)
    coincident = coincident_time_stamp(row)
    if coincident:
        out.append(coincident)
    return out


def patient_observations(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What a patient's Observation search (and bulk export) finds for one reading: its measurements and its
    status-bits Observation (the coincident timestamp's subject is the device, not the patient: read by id)."""
    observations = observations_from_row(row)
    return observations + [c for c in phd_companions(row, observations)
                           if c["subject"]["reference"].startswith("Patient/")]


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


CONSENT_SCOPE_SYSTEM = "urn:rpm:consent-scope"
CARE_TEAM_SYSTEM = "urn:rpm:care-team-id"
AUDIT_SUBJECT_SYSTEM = "urn:rpm:audit-subject"
# What each consent scope opens, as FHIR resource types (Consent.provision.class).
_SCOPE_CLASSES = {"readings": ("Observation", "Device"), "alerts": ("Flag",), "twin": ()}
_SCOPE_TEXT = {"readings": "device readings", "alerts": "alerts", "twin": "the digital twin (summaries, baselines)"}


def consent_status(consent: Mapping[str, Any], at: datetime | None = None) -> str:
    """``active``, ``inactive`` (revoked or expired: R4's Consent.status has no "expired"; the provision's
    period end says when) or ``proposed`` (granted from a future time)."""
    at = at or datetime.now(UTC)
    if consent.get("revoked_at") is not None:
        return "inactive"
    if consent.get("expires_at") is not None and consent["expires_at"] <= at:
        return "inactive"
    if consent["granted_at"] > at:
        return "proposed"
    return "active"


def consent_id(consent_row_id: int) -> str:
    return f"consent-{consent_row_id}"


def consent_resource(consent: Mapping[str, Any], at: datetime | None = None) -> dict[str, Any]:
    """A ``Consent`` (R4, scope patient-privacy) for a ``consents`` row ``{id, patient_id, care_team_id,
    care_team_name?, scopes, granted_at, granted_by, expires_at, revoked_at, revoked_by}``: the patient
    permits the care team (the provision's actor, by identifier: we serve no Organization) each scope as a
    nested provision naming the resource types it opens; the period runs from the grant to the revocation
    or expiry."""
    team: dict[str, Any] = {"identifier": {"system": CARE_TEAM_SYSTEM, "value": consent["care_team_id"]},
                            "display": consent.get("care_team_name") or consent["care_team_id"]}
    period: dict[str, str] = {"start": _iso(consent["granted_at"])}
    end = consent.get("revoked_at") or consent.get("expires_at")
    if end is not None:
        period["end"] = _iso(end)
    status = consent_status(consent, at)
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id(consent["id"]),
        "identifier": [{"system": "urn:rpm:consent-id", "value": str(consent["id"])}],
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy", "display": "Privacy Consent"}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{fhir_id(consent['patient_id'])}"},
        "dateTime": _iso(consent["granted_at"]),
        "performer": [{"reference": f"Patient/{fhir_id(consent['patient_id'])}"}],
        "organization": [team],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN",
                                   "display": "opt-in"}]},
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP", "display": "information recipient"}]},
                       "reference": team}],
            "provision": [
                {"type": "permit",
                 "code": [{"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": scope}], "text": _SCOPE_TEXT[scope]}],
                 **({"class": [{"system": "http://hl7.org/fhir/resource-types", "code": c}
                               for c in _SCOPE_CLASSES[scope]]} if _SCOPE_CLASSES.get(scope) else {})}
                for scope in consent["scopes"] if scope in _SCOPE_TEXT
            ],
        },
    }
    if status == "inactive" and consent.get("revoked_at") is None:
        resource["provision"]["period"]["end"] = _iso(consent["expires_at"])  # expired, not revoked
    return resource


_ACTIONS = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
# AuditEvent.outcome (R4): 0 success, 4 minor failure (refused, not found), 8 serious failure.
_OUTCOMES = {"allowed": "0", "not_found": "4", "forbidden": "4", "unauthenticated": "4", "error": "8"}


def audit_event_id(audit_row_id: int) -> str:
    return f"audit-{audit_row_id}"


def audit_event_resource(row: Mapping[str, Any], patient_id: str) -> dict[str, Any]:
    """An ``AuditEvent`` (R4, type rest) for an ``audit_log`` row seen from ``patient_id``: who (subject,
    role, care teams), what (the route), when, how it ended, and only this patient as the entity: the other
    patients one request named (a panel) are counted in the description, never listed."""
    method, _, route = str(row["action"]).partition(" ")
    others = max(int(row.get("patients_in_request") or 1) - 1, 0)
    agent_text = f"{row['role']}" + (f" of {', '.join(row['care_teams'])}" if row.get("care_teams") else "")
    description = route or str(row["action"])
    if others:
        description += f" (the same request named {others} other patient{'s' if others != 1 else ''})"
    return {
        "resourceType": "AuditEvent",
        "id": audit_event_id(row["id"]),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "urn:rpm:api-route", "code": str(row["action"])[:200]}],
        "action": _ACTIONS.get(method, "E"),
        "recorded": _iso(row["at"]),
        "outcome": _OUTCOMES.get(row["outcome"], "4"),
        "outcomeDesc": f"{row['outcome']}" + (f" (HTTP {row['status']})" if row.get("status") is not None else ""),
        "agent": [{"type": {"text": agent_text}, "who": {"identifier": {"system": AUDIT_SUBJECT_SYSTEM,
                                                                           "value": row["subject"]},
                                                            "display": row["subject"]},
                   "requestor": True}],
        "source": {"site": "RPM clinician API", "observer": {"display": "RPM clinician API"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "3",
                             "display": "Web Server"}]},
        "entity": [{"what": {"reference": f"Patient/{fhir_id(patient_id)}"},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                             "display": "Person"},
                    "description": description,
                    "detail": [{"type": "request-id", "valueString": str(row["request_id"])}]}],
    }


def reading_row(conn: Any, reading_id: str) -> dict[str, Any] | None:
    """A stored reading with its values, in the shape :func:`observations_from_row` takes."""
    return queries.reading_with_values(conn, reading_id)
