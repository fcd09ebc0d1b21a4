"""The twin's pure parts: reference categories from the spec, adherence, the fold of events."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from cloud.twin.state import (
    UnknownTwinEvent,
    adherence,
    apply_event,
    bmi_class,
    bp_category,
    empty_state,
    glucose_range,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("sys_", "dia", "category"), [
    (118, 78, "normal"), (125, 79, "elevated"), (125, 80, "stage_1_hypertension"),
    (135, 70, "stage_1_hypertension"), (140, 70, "stage_2_hypertension"), (120, 90, "stage_2_hypertension"),
    (181, 100, "hypertensive_crisis"), (150, 121, "hypertensive_crisis"), (180, 120, "stage_2_hypertension"),
])
def test_aha_blood_pressure_categories(sys_, dia, category):
    assert bp_category(sys_, dia) == category


@pytest.mark.parametrize(("mg_dl", "level"), [
    (53.9, "level_2_hypoglycaemia"), (54, "level_1_hypoglycaemia"), (69.9, "level_1_hypoglycaemia"),
    (70, "target_range"), (180, "target_range"), (181, "level_1_hyperglycaemia"), (250, "level_1_hyperglycaemia"),
    (251, "level_2_hyperglycaemia"),
])
def test_glucose_ranges_of_the_time_in_range_consensus(mg_dl, level):
    assert glucose_range(mg_dl) == level


@pytest.mark.parametrize(("bmi", "who"), [(18.4, "underweight"), (18.5, "normal"), (24.9, "normal"),
                                          (25, "overweight"), (29.9, "overweight"), (30, "obese")])
def test_who_bmi_classes(bmi, who):
    assert bmi_class(bmi) == who


def reading(reading_id: str, at: datetime, **values: float) -> dict:
    return {"reading_id": reading_id, "kind": "body_weight", "measured_at": at.isoformat(), "values": values,
            "units": {}, "flags": [], "device_uid": "ble:scale"}


def test_late_reading_never_replaces_a_newer_latest_value():
    t = datetime(2026, 5, 1, 8, tzinfo=UTC)
    state = apply_event(empty_state("p"), "reading_added", reading("new", t, body_weight=80.0))
    state = apply_event(state, "reading_added", reading("old", t - timedelta(days=3), body_weight=85.0))
    assert state["latest"]["body_weight"]["reading_id"] == "new"
    assert state["counts"]["readings"] == 2 and len(state["reading_days"]) == 2


def test_bmi_class_from_weight_and_height():
    t = datetime(2026, 5, 1, 8, tzinfo=UTC)
    state = apply_event(empty_state("p"), "reading_added", reading("r", t, body_weight=95.0, height=1.75))
    assert state["categories"]["bmi"]["class"] == "obese" and state["categories"]["bmi"]["bmi"] == 31.0


def test_adherence_counts_distinct_days_in_the_last_30_and_the_16_day_rule():
    as_of = date(2026, 5, 31)
    state = {"reading_days": [(as_of - timedelta(days=d)).isoformat() for d in range(0, 40, 2)]}
    got = adherence(state, as_of)
    assert got["days_with_readings"] == 15 and not got["meets_16_day_rule"] and got["days_short"] == 1
    state["reading_days"].append((as_of - timedelta(days=1)).isoformat())
    assert adherence(state, as_of)["meets_16_day_rule"]


def test_an_unknown_event_is_a_typed_error():
    with pytest.raises(UnknownTwinEvent):
        apply_event(empty_state("p"), "teleported", {})
