"""Summary maths clinicians read (pure: rows in, numbers out; the SQL is in :mod:`cloud.api.queries`).

Glucose follows the International Consensus on Time in Range (Battelino et al., Diabetes Care 2019):
ranges < 54, 54-69, 70-180, 181-250, > 250 mg/dL, CV = SD / mean, and the Glucose Management
Indicator GMI (%) = 3.31 + 0.02392 x mean (Bergenstal et al., Diabetes Care 2018). Blood pressure:
ACC/AHA 2017 categories of the average (home readings are judged as averages). Adherence: distinct
days with readings per 30-day period, the CPT 99454 16-day rule (specs/clinical-thresholds.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from statistics import fmean
from typing import Any

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
