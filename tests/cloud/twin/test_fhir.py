"""FHIR R4 mapping validated with fhir.resources (R4B models: Observation, Flag and Patient are the
same shape as in R4)."""

from __future__ import annotations

from datetime import date

import pytest
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from cloud.alerts import service as alerts
from cloud.twin.fhir import fhir_id, flag_from_alert, observations_from_row, patient_resource, reading_row
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, make_reading, now, weight

pytestmark = pytest.mark.integration


def codes(concept) -> set[str]:
    return {c.code for c in concept.coding}


def test_blood_pressure_reading_is_a_bp_panel_with_components_and_a_heart_rate(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    reading = bp(cuff, now(), 142, 91, pulse=77, flags=["irregular_pulse"])
    ingest(conn, [reading], unique_id)
    panel, pulse = [Observation.model_validate(o) for o in observations_from_row(reading_row(conn, reading.id))]
    assert "85354-9" in codes(panel.code) and "150020" in codes(panel.code)
    assert panel.meta.profile == ["http://hl7.org/fhir/StructureDefinition/bp"]
    assert panel.category[0].coding[0].code == "vital-signs" and panel.status == "final"
    by_code = {next(iter(codes(c.code) & {"8480-6", "8462-4"})): c.valueQuantity for c in panel.component}
    assert (by_code["8480-6"].value, by_code["8480-6"].code, by_code["8480-6"].system) == (
        142, "mm[Hg]", "http://unitsofmeasure.org")
    assert by_code["8462-4"].value == 91
    assert panel.device.identifier.value == cuff and panel.subject.reference == f"Patient/{unique_id}"
    assert panel.effectiveDateTime is not None and "irregular_pulse" in panel.note[0].text
    assert "8867-4" in codes(pulse.code) and pulse.valueQuantity.code == "/min" and pulse.valueQuantity.value == 77
    assert pulse.derivedFrom[0].reference == f"Observation/{panel.id}"


def test_weight_and_glucose_observations(conn, unique_id):
    devices = add_patient(conn, unique_id, kinds=("body_weight", "glucose"))
    w = weight(devices["body_weight"], now(), 81.2)
    g = make_reading(devices["glucose"], "glucose", now(), {"glucose": 132})
    ingest(conn, [w, g], unique_id)
    [ow] = [Observation.model_validate(o) for o in observations_from_row(reading_row(conn, w.id))]
    assert "29463-7" in codes(ow.code) and (float(ow.valueQuantity.value), ow.valueQuantity.code) == (81.2, "kg")
    [og] = [Observation.model_validate(o) for o in observations_from_row(reading_row(conn, g.id))]
    assert "41653-7" in codes(og.code) and og.valueQuantity.code == "mg/dL"
    assert og.category[0].coding[0].code == "laboratory"


def test_alert_is_a_flag_active_until_resolved(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 200, 100)], unique_id))
    flag = Flag.model_validate(flag_from_alert(alerts.get_alert(conn, int(opened.alert_id))))
    assert flag.status == "active" and "bp_crisis" in codes(flag.code) and flag.period.end is None
    closed = Flag.model_validate(flag_from_alert(alerts.resolve(conn, int(opened.alert_id), "dr.c")))
    assert closed.status == "inactive" and closed.period.end is not None


def test_patient_resource_and_ids_that_fhir_would_refuse():
    patient = Patient.model_validate(patient_resource(
        {"id": "p_42:x", "display_name": "Ada L", "sex": "female", "birth_date": date(1950, 2, 3)}))
    assert patient.id == fhir_id("p_42:x") and patient.id.startswith("h-")
    assert patient.identifier[0].value == "p_42:x" and patient.gender == "female"
    assert str(patient.birthDate) == "1950-02-03"
