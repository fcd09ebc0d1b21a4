"""The twin's state as a pure fold of its events: ``state = reduce(apply_event, events, empty_state())``.

Nothing here reads a clock or the database: every time and value comes from the event's data, so
replaying a patient's event history rebuilds exactly the state that was stored (``replay``).
Reference categories follow specs/clinical-thresholds.md (ACC/AHA 2017 BP categories, ADA/Time in
Range glucose levels, WHO BMI classes).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from cloud.errors import CloudError
from gateway.metrics import EXCLUDED_FLAGS

READING_DAYS_KEPT = 90
"""Distinct days with readings kept in the state: enough for any 30-day adherence window."""


class UnknownTwinEvent(CloudError, ValueError):
    """An event type this fold does not know (a newer writer, or corrupted history)."""


def empty_state(patient_id: str) -> dict[str, Any]:
    return {
        "patient_id": patient_id,
        "latest": {},
        "baselines": {},
        "categories": {},
        "open_alerts": {},
        "needs_review": {},
        "devices": {},
        "reading_days": [],
        "thresholds": {},
        "counts": {"readings": 0, "excluded_readings": 0, "late_readings": 0},
    }


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def bp_category(systolic: float, diastolic: float) -> str:
    """ACC/AHA 2017 category of one blood-pressure reading (crisis checked first: > 180 and/or > 120)."""
    if systolic > 180 or diastolic > 120:
        return "hypertensive_crisis"
    if systolic >= 140 or diastolic >= 90:
        return "stage_2_hypertension"
    if systolic >= 130 or diastolic >= 80:
        return "stage_1_hypertension"
    if systolic >= 120:
        return "elevated"
    return "normal"


def glucose_range(mg_dl: float) -> str:
    """International Consensus on Time in Range (2019) level of one glucose value."""
    if mg_dl < 54:
        return "level_2_hypoglycaemia"
    if mg_dl < 70:
        return "level_1_hypoglycaemia"
    if mg_dl <= 180:
        return "target_range"
    if mg_dl <= 250:
        return "level_1_hyperglycaemia"
    return "level_2_hyperglycaemia"


def bmi_class(bmi: float) -> str:
    """WHO adult BMI class."""
    if bmi < 18.5:
        return "underweight"
    if bmi < 25:
        return "normal"
    if bmi < 30:
        return "overweight"
    return "obese"


def _categories(latest: Mapping[str, Any]) -> dict[str, Any]:
    categories: dict[str, Any] = {}
    sys_, dia = latest.get("systolic"), latest.get("diastolic")
    if sys_ and dia and sys_["reading_id"] == dia["reading_id"]:
        categories["blood_pressure"] = {
            "category": bp_category(sys_["value"], dia["value"]),
            "source": "ACC/AHA 2017",
            "reading_id": sys_["reading_id"],
            "measured_at": sys_["measured_at"],
        }
    if glucose := latest.get("glucose"):
        categories["glucose"] = {
            "range": glucose_range(glucose["value"]),
            "source": "International Consensus on Time in Range 2019",
            "reading_id": glucose["reading_id"],
            "measured_at": glucose["measured_at"],
        }
    bmi = latest.get("bmi")
    if bmi is None and (weight := latest.get("body_weight")) and (height := latest.get("height")):
        if height["value"] > 0:
            bmi = {**weight, "value": weight["value"] / height["value"] ** 2}
    if bmi is not None:
        categories["bmi"] = {
            "class": bmi_class(bmi["value"]),
            "bmi": round(bmi["value"], 1),
            "source": "WHO",
            "measured_at": bmi["measured_at"],
        }
    return categories


def _add_reading(state: dict[str, Any], data: Mapping[str, Any]) -> None:
    measured_at = _parse(data["measured_at"])
    device_uid = data.get("device_uid")
    if device_uid:
        device = state["devices"].setdefault(device_uid, {})
        seen = data.get("received_at") or data["measured_at"]
        if device.get("last_seen") is None or _parse(seen) > _parse(device["last_seen"]):
            device["last_seen"] = seen
        if data.get("battery") is not None:
            device["battery"] = data["battery"]
        if data.get("profile"):
            device["profile"] = data["profile"]
    if EXCLUDED_FLAGS & set(data.get("flags", ())):
        state["counts"]["excluded_readings"] += 1
        return
    state["counts"]["readings"] += 1
    if data.get("late"):
        state["counts"]["late_readings"] += 1
    for metric, value in data.get("values", {}).items():
        if isinstance(value, list):
            continue  # rr_intervals: kept in the observations, not a "latest value"
        current = state["latest"].get(metric)
        # A late reading never replaces a newer latest value.
        if current is not None and _parse(current["measured_at"]) > measured_at:
            continue
        state["latest"][metric] = {
            "value": value,
            "unit": data.get("units", {}).get(metric),
            "measured_at": data["measured_at"],
            "reading_id": data["reading_id"],
            "flags": list(data.get("flags", ())),
        }
    day = measured_at.date().isoformat()
    days = set(state["reading_days"])
    days.add(day)
    state["reading_days"] = sorted(days)[-READING_DAYS_KEPT:]
    state["categories"] = _categories(state["latest"])


def apply_event(state: dict[str, Any], event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Return the state after one event (the input is not modified)."""
    state = copy.deepcopy(state)
    _apply_in_place(state, event_type, data)
    return state


def _apply_in_place(state: dict[str, Any], event_type: str, data: Mapping[str, Any]) -> None:
    if event_type == "reading_added":
        _add_reading(state, data)
    elif event_type == "baselines_computed":
        state["baselines"].update({metric: dict(stats) for metric, stats in data["baselines"].items()})
    elif event_type in ("alert_opened", "alert_updated", "alert_acknowledged"):
        alert = dict(data)
        state["open_alerts"][str(alert.pop("alert_id"))] = alert
    elif event_type == "alert_resolved":
        alert = dict(data)
        alert_id = str(alert.pop("alert_id"))
        state["open_alerts"].pop(alert_id, None)
        # Resolved before anyone looked, and it needs a look (a crisis): still the care team's business.
        if alert.get("review_state") == "pending":
            state.setdefault("needs_review", {})[alert_id] = {**alert, "needs_review": True}
    elif event_type == "alert_reviewed":
        state.setdefault("needs_review", {}).pop(str(data["alert_id"]), None)
    elif event_type == "threshold_changed":
        state["thresholds"][data["rule_id"]] = copy.deepcopy(dict(data["rule"]))
    elif event_type == "device_assigned":
        device = state["devices"].setdefault(data["device_uid"], {})
        device["user_index"] = data.get("user_index")
        device["assigned_from"] = data.get("valid_from")
    else:
        raise UnknownTwinEvent(f"unknown twin event type {event_type!r}")


def apply_events(state: dict[str, Any], events: Iterable[tuple[str, Mapping[str, Any]]], *,
                 in_place: bool = False) -> dict[str, Any]:
    """Return the state after the events, in order (the input is modified only with ``in_place``)."""
    if not in_place:
        state = copy.deepcopy(state)
    for event_type, data in events:
        _apply_in_place(state, event_type, data)
    return state


def replay(patient_id: str, events: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Rebuild a patient's state from the start of its history."""
    return apply_events(empty_state(patient_id), events)


def adherence(state: Mapping[str, Any], as_of: date, *, period_days: int = 30, required_days: int = 16) -> dict:
    """Distinct days with a patient reading in the ``period_days`` ending ``as_of`` (UTC days).

    CPT 99454 asks for readings on at least 16 days of a 30-day period (specs/clinical-thresholds.md).
    """
    first = as_of - timedelta(days=period_days - 1)
    days = [d for d in state.get("reading_days", ()) if first <= date.fromisoformat(d) <= as_of]
    return {
        "period_days": period_days,
        "days_with_readings": len(days),
        "required_days": required_days,
        "meets_16_day_rule": len(days) >= required_days,
        "days_short": max(0, required_days - len(days)),
    }
