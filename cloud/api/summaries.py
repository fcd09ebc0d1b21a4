"""Summary maths clinicians read (pure: rows in, numbers out; the SQL is in :mod:`cloud.api.queries`).

Glucose follows the International Consensus on Time in Range (Battelino et al., Diabetes Care 2019):
ranges < 54, 54-69, 70-180, 181-250, > 250 mg/dL, CV = SD / mean, and the Glucose Management
Indicator GMI (%) = 3.31 + 0.02392 x mean (Bergenstal et al., Diabetes Care 2018). Blood pressure:
ACC/AHA 2017 categories of the average (home readings are judged as averages). Adherence: distinct
days with readings per 30-day period, the CPT 99454 16-day rule (specs/clinical-thresholds.md).
Pulse oximetry: time below 90 % and 88 % (the thresholds home-oximetry reports and the BTS 2017 target
ranges use) and each night's minimum; body temperature: each day's maximum and the days at or above
38.0 Cel (NEWS2's fever band).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from itertools import pairwise
from statistics import fmean
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from cloud.twin.state import bp_category

GLUCOSE_RANGES = ("below_54", "from_54_to_69", "from_70_to_180", "from_181_to_250", "above_250")
MORNING_HOURS = range(4, 12)
"""Local 04:00-11:59: the morning home-BP series (taken on waking, before medication)."""
EVENING_HOURS = range(18, 24)
"""Local 18:00-23:59: the evening series (before bed)."""


def gmi(mean_mg_dl: float) -> float:
    """Glucose Management Indicator in % (Bergenstal 2018)."""
    return 3.31 + 0.02392 * mean_mg_dl


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def glucose_summary(stats: Mapping[str, Any], days: int) -> dict[str, Any]:
    """From :func:`cloud.api.queries.glucose_stats` (count, mean, sd, per-range counts, days_with_data)."""
    count = int(stats["count"] or 0)
    out: dict[str, Any] = {"days": days, "readings": count, "days_with_data": int(stats.get("days_with_data") or 0)}
    out["percent_days_with_data"] = round(100.0 * out["days_with_data"] / days, 1) if days else None
    if count == 0:
        out.update({"mean_mg_dl": None, "gmi_percent": None, "cv_percent": None, "sd_mg_dl": None,
                    "time_in_ranges_percent": None})
        return out
    mean = float(stats["mean"])
    sd = float(stats["sd"]) if stats.get("sd") is not None else None
    ranges = {name: 100.0 * int(stats[name]) / count for name in GLUCOSE_RANGES}
    out.update({
        "mean_mg_dl": round(mean, 1),
        "sd_mg_dl": _round(sd),
        "gmi_percent": round(gmi(mean), 2),
        "cv_percent": round(100.0 * sd / mean, 1) if sd is not None and mean > 0 else None,
        "time_in_ranges_percent": {name: round(value, 1) for name, value in ranges.items()},
        # Consensus targets for most adults with diabetes; "sufficient" is the consensus's 14 days, > 70 % present.
        "targets_met": {
            "time_in_range_over_70": ranges["from_70_to_180"] > 70,
            "below_70_under_4": ranges["below_54"] + ranges["from_54_to_69"] < 4,
            "below_54_under_1": ranges["below_54"] < 1,
            "above_180_under_25": ranges["from_181_to_250"] + ranges["above_250"] < 25,
            "above_250_under_5": ranges["above_250"] < 5,
            "cv_at_most_36": sd is not None and mean > 0 and 100.0 * sd / mean <= 36,
        },
        "sufficient_data": days >= 14 and out["days_with_data"] > 0.7 * days,
    })
    return out


def _bp_average(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    pairs = [r for r in rows if r["systolic"] is not None and r["diastolic"] is not None]
    if not pairs:
        return None
    systolic = fmean(r["systolic"] for r in pairs)
    diastolic = fmean(r["diastolic"] for r in pairs)
    pulses = [r["pulse_rate"] for r in pairs if r.get("pulse_rate") is not None]
    return {"readings": len(pairs), "systolic": round(systolic, 1), "diastolic": round(diastolic, 1),
            "pulse_rate": round(fmean(pulses), 1) if pulses else None,
            "category": bp_category(systolic, diastolic)}


def bp_summary(rows: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """Rows ``{measured_at, local_hour, systolic, diastolic, pulse_rate}`` of the last 30 days."""
    last_7 = [r for r in rows if r["measured_at"] >= now - timedelta(days=7)]
    last_30 = [r for r in rows if r["measured_at"] >= now - timedelta(days=30)]
    seven, thirty = _bp_average(last_7), _bp_average(last_30)
    current = seven or thirty
    return {
        "average_7_days": seven,
        "average_30_days": thirty,
        "morning_7_days": _bp_average([r for r in last_7 if r["local_hour"] in MORNING_HOURS]),
        "evening_7_days": _bp_average([r for r in last_7 if r["local_hour"] in EVENING_HOURS]),
        "morning_30_days": _bp_average([r for r in last_30 if r["local_hour"] in MORNING_HOURS]),
        "evening_30_days": _bp_average([r for r in last_30 if r["local_hour"] in EVENING_HOURS]),
        "aha_category": current["category"] if current else None,
        "category_source": "ACC/AHA 2017, of the 7-day average (30-day when the last 7 days have none)",
    }


def _value_near(series: Sequence[tuple[datetime, float]], target: datetime, tolerance: timedelta) -> float | None:
    best: tuple[timedelta, float] | None = None
    for at, value in series:
        distance = abs(at - target)
        if distance <= tolerance and (best is None or distance < best[0]):
            best = (distance, value)
    return best[1] if best else None


def weight_summary(series: Sequence[tuple[datetime, float]], now: datetime) -> dict[str, Any]:
    """Change over 1, 7 and 30 days (latest minus the reading nearest that long before it) and the
    least-squares slope of the 30 days up to the latest reading, in kg per week. ``now`` bounds nothing
    here (the query did); it is kept for symmetry with the other summaries."""
    if not series:
        return {"latest_kg": None, "latest_at": None, "change_kg": {"1_day": None, "7_days": None, "30_days": None},
                "slope_kg_per_week": None, "readings_30_days": 0}
    latest_at, latest = series[-1]
    changes: dict[str, float | None] = {}
    for label, days in (("1_day", 1), ("7_days", 7), ("30_days", 30)):
        # A daily weigh-in drifts by minutes to hours; allow a quarter of the span, at most half a day.
        tolerance = min(timedelta(hours=12), timedelta(days=days) / 4)
        reference = _value_near(series[:-1], latest_at - timedelta(days=days), tolerance)
        changes[label] = None if reference is None else round(latest - reference, 2)
    # The 30 days up to the latest weigh-in: a patient who stopped weighing still gets the recent trend.
    window = [(t, v) for t, v in series if t >= latest_at - timedelta(days=30)]
    slope = None
    if len(window) >= 2 and window[-1][0] > window[0][0]:
        x = np.array([(t - window[0][0]).total_seconds() / 86400.0 for t, _ in window])
        y = np.array([v for _, v in window])
        slope = round(float(np.polyfit(x, y, 1)[0]) * 7, 3)
    return {"latest_kg": round(latest, 2), "latest_at": latest_at, "change_kg": changes,
            "slope_kg_per_week": slope, "readings_30_days": len(window)}


def adherence_summary(days_with_readings: Sequence[str], as_of: date, periods: int = 3,
                      period_days: int = 30, required_days: int = 16) -> dict[str, Any]:
    """Distinct days with readings in consecutive 30-day periods ending ``as_of`` (newest first)."""
    days = {date.fromisoformat(d) for d in days_with_readings}
    out = []
    for i in range(periods):
        end = as_of - timedelta(days=i * period_days)
        start = end - timedelta(days=period_days - 1)
        n = sum(1 for d in days if start <= d <= end)
        out.append({"start": start, "end": end, "days_with_readings": n, "required_days": required_days,
                    "meets_16_day_rule": n >= required_days, "days_short": max(0, required_days - n)})
    return {"periods": out, "current": out[0]}


SPO2_BELOW = (90, 88)
"""SpO2 thresholds (%) whose time-below the oximetry summary reports."""
MAX_WEIGHT = timedelta(minutes=10)
"""The longest a single SpO2 reading stands for: a continuous oximeter's window readings come a minute
apart and stand for the minute up to the next one; a spot-check hours from the next stands for ten
minutes, not for the whole gap."""
NIGHT_START_HOUR, NIGHT_END_HOUR = 22, 8
"""A night is local 22:00-07:59, named by the date it starts (overnight desaturation)."""
FEVER_CEL = 38.0


def _weights(series: Sequence[tuple[datetime, float]]) -> list[timedelta]:
    """How long each reading stands for: until the next reading, at most MAX_WEIGHT (the last: the
    median spacing of the series, at most MAX_WEIGHT)."""
    gaps = [min(b[0] - a[0], MAX_WEIGHT) for a, b in pairwise(series)]
    last = sorted(gaps)[len(gaps) // 2] if gaps else MAX_WEIGHT
    return [*gaps, last]


def _night_of(at: datetime, tz: ZoneInfo) -> date | None:
    local = at.astimezone(tz)
    if local.hour >= NIGHT_START_HOUR:
        return local.date()
    if local.hour < NIGHT_END_HOUR:
        return local.date() - timedelta(days=1)
    return None


def oximetry_summary(series: Sequence[tuple[datetime, float]], days: int, tz: str) -> dict[str, Any]:
    """SpO2 (%) readings in time order (excluded flags already left out) -> latest, minimum, mean,
    time below 90 and 88 % (minutes and share of the measured time, each reading weighted by how long it
    stands for, see :data:`MAX_WEIGHT`), and per night the minimum and minutes below 90 %."""
    zone = ZoneInfo(tz)
    out: dict[str, Any] = {"days": days, "readings": len(series)}
    if not series:
        out.update({"latest_percent": None, "latest_at": None, "min_percent": None, "mean_percent": None,
                    "measured_minutes": 0.0, "time_below": {f"below_{t}": None for t in SPO2_BELOW}, "nights": []})
        return out
    weights = _weights(series)
    measured = sum(weights, timedelta())
    time_below: dict[str, dict[str, float]] = {}
    for threshold in SPO2_BELOW:
        below = sum((w for (_, v), w in zip(series, weights, strict=True) if v < threshold), timedelta())
        time_below[f"below_{threshold}"] = {
            "minutes": round(below.total_seconds() / 60, 1),
            "percent": round(100.0 * below / measured, 1) if measured else 0.0,
        }
    nights: dict[date, dict[str, Any]] = {}
    for (at, value), weight in zip(series, weights, strict=True):
        night = _night_of(at, zone)
        if night is None:
            continue
        entry = nights.setdefault(night, {"night_of": night, "min_percent": value, "min_at": at, "readings": 0,
                                          "minutes_below_90": 0.0})
        entry["readings"] += 1
        if value < entry["min_percent"]:
            entry["min_percent"], entry["min_at"] = value, at
        if value < 90:
            entry["minutes_below_90"] = round(entry["minutes_below_90"] + weight.total_seconds() / 60, 1)
    values = [v for _, v in series]
    out.update({
        "latest_percent": round(series[-1][1], 1),
        "latest_at": series[-1][0],
        "min_percent": round(min(values), 1),
        "mean_percent": round(fmean(values), 1),
        "measured_minutes": round(measured.total_seconds() / 60, 1),
        "time_below": time_below,
        "nights": [nights[night] for night in sorted(nights)],
    })
    return out


def temperature_summary(series: Sequence[tuple[datetime, float]], days: int, tz: str) -> dict[str, Any]:
    """Body temperature (Cel) readings in time order -> latest, maximum, and per local day the maximum
    and whether it reached the fever band (>= 38.0 Cel)."""
    zone = ZoneInfo(tz)
    daily: dict[date, dict[str, Any]] = {}
    for at, value in series:
        day = at.astimezone(zone).date()
        entry = daily.setdefault(day, {"date": day, "max_cel": value, "max_at": at, "readings": 0})
        entry["readings"] += 1
        if value > entry["max_cel"]:
            entry["max_cel"], entry["max_at"] = value, at
    days_out = [{**daily[day], "max_cel": round(daily[day]["max_cel"], 1),
                 "fever": daily[day]["max_cel"] >= FEVER_CEL} for day in sorted(daily)]
    return {
        "days": days,
        "readings": len(series),
        "latest_cel": round(series[-1][1], 1) if series else None,
        "latest_at": series[-1][0] if series else None,
        "max_cel": round(max(v for _, v in series), 1) if series else None,
        "days_with_fever": sum(1 for day in days_out if day["fever"]),
        "daily": days_out,
    }
