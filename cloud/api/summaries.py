"""Summary maths clinicians read (pure: rows in, numbers out; the SQL is in :mod:`cloud.api.queries` and
:mod:`cloud.api.routes.summaries`).

Blood pressure and weight are computed by the alert rules' own code (``cloud.alerts.evaluate.evaluate`` and
the history ``Series.window`` the rules use) over the same readings and windows, so the page never puts a
"stage 1" headline beside a stage-2 7-day-average alert, or "change null" beside a "+2.9 kg in 168 h" one.

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

from cloud.alerts.evaluate import ReadingFacts, evaluate
from cloud.db.alert_rules import Rule
from cloud.twin.baselines import EMPTY, History
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


BP_AVERAGE_RULE = "bp_stage2_average"
"""The rule whose window and average give the blood-pressure headline category (migration 0300)."""
WEIGHT_WINDOWS = (("1_day", "weight_gain_24h", 24.0), ("7_days", "weight_gain_7d", 168.0), ("30_days", None, 720.0))
"""Weight change windows: label, the rate rule measuring that window (its ``window_hours`` in force wins over
the default hours here), default hours. No rule watches 30 days; it is measured the same way."""
BP_METRICS = ("systolic", "diastolic", "pulse_rate")
_BP_SOURCE = ("ACC/AHA 2017 category of the average over the window of rule bp_stage2_average in force"
              " (7 days up to the latest reading by default), the average the alert judges")


def window(since: datetime, until: datetime, description: str) -> dict[str, Any]:
    """How a summary names the period it covers."""
    return {"since": since, "until": until, "description": description}


def rule_state(rule: Rule | None, facts: ReadingFacts | None, history: History, now: datetime) -> dict[str, Any]:
    """What the rule in force says about the latest reading, from ``evaluate`` itself: the verdict the alert
    engine reaches on the same readings (``None``: the rule does not judge, e.g. too few readings)."""
    verdict = evaluate(rule, facts, history, now) if rule is not None and facts is not None else None
    return {"rule_id": rule.id if rule else None, "enabled": bool(rule and rule.enabled),
            "outcome": verdict.outcome if verdict else None, "message": (verdict.message or None) if verdict else None}


def _local_hours(times: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    return np.fromiter((datetime.fromtimestamp(t, zone).hour for t in times), dtype=int, count=len(times))


def _bp_average(history: History, facts: ReadingFacts, days: float, zone: ZoneInfo,
                hours: range | None = None) -> dict[str, Any] | None:
    """Mean systolic, diastolic and pulse over the ``days`` up to and including the reading, each metric's
    values taken by :meth:`Series.window` as the average rule takes them; ``hours``: only those measured at
    these local hours (the morning and evening series)."""
    since = facts.measured_at - timedelta(days=days)
    means: dict[str, float | None] = {}
    counts: list[int] = []
    for metric in BP_METRICS:
        series = history.get((facts.patient_id, metric), EMPTY)
        if hours is None:
            values = series.window(since, facts.measured_at)
        else:  # the same (since, until] bounds, then the local hour
            low = int(np.searchsorted(series.t, since.timestamp(), side="right"))
            high = int(np.searchsorted(series.t, facts.measured_at.timestamp(), side="right"))
            values = series.v[low:high][np.isin(_local_hours(series.t[low:high], zone), list(hours))]
        means[metric] = float(np.mean(values)) if len(values) else None
        if metric != "pulse_rate":
            counts.append(len(values))
    systolic, diastolic = means["systolic"], means["diastolic"]
    if systolic is None or diastolic is None:
        return None
    return {"since": since, "until": facts.measured_at, "readings": min(counts), "systolic": round(systolic, 1),
            "diastolic": round(diastolic, 1), "pulse_rate": _round(means["pulse_rate"]),
            "category": bp_category(systolic, diastolic)}


def bp_summary(history: History, latest: ReadingFacts | None, rule: Rule | None, now: datetime,
               tz: str) -> dict[str, Any]:
    """Blood pressure as the alert rules see it. ``latest`` is the newest judged cuff reading (at or before
    the summary's end) and ``history`` the patient's values up to it. Every window ends at that reading,
    as the average rule's window ends at the reading it judges; the headline ``aha_category`` is the
    ACC/AHA category of the average over the window of ``rule`` (bp_stage2_average as in force for the
    patient), and ``latest_category`` the latest reading's own category."""
    zone = ZoneInfo(tz)
    state = rule_state(rule, latest, history, now)
    if latest is None:
        return {"latest": None, "latest_category": None, "aha_category": None, "category_source": _BP_SOURCE,
                "rule_average": None, "rule": state, "average_7_days": None, "average_30_days": None,
                "morning_7_days": None, "evening_7_days": None, "morning_30_days": None, "evening_30_days": None}
    days = float(rule.params.get("window_days", 7)) if rule else 7.0
    min_readings = int(rule.params.get("min_readings", 4)) if rule else 4
    rule_average = _bp_average(history, latest, days, zone)
    if rule_average is not None:
        rule_average.update({"window_days": days, "min_readings": min_readings,
                             "enough_readings": rule_average["readings"] >= min_readings})
    systolic, diastolic = latest.values.get("systolic"), latest.values.get("diastolic")
    latest_category = bp_category(systolic, diastolic) if systolic is not None and diastolic is not None else None
    return {
        "latest": {"reading_id": latest.reading_id, "measured_at": latest.measured_at, "systolic": systolic,
                   "diastolic": diastolic, "pulse_rate": latest.values.get("pulse_rate"), "category": latest_category},
        "latest_category": latest_category,
        "aha_category": rule_average["category"] if rule_average else None,
        "category_source": _BP_SOURCE,
        "rule_average": rule_average,
        "rule": state,
        "average_7_days": _bp_average(history, latest, 7, zone),
        "average_30_days": _bp_average(history, latest, 30, zone),
        "morning_7_days": _bp_average(history, latest, 7, zone, MORNING_HOURS),
        "evening_7_days": _bp_average(history, latest, 7, zone, EVENING_HOURS),
        "morning_30_days": _bp_average(history, latest, 30, zone, MORNING_HOURS),
        "evening_30_days": _bp_average(history, latest, 30, zone, EVENING_HOURS),
    }


def weight_windows(rules: Mapping[str, Rule]) -> list[tuple[str, Rule | None, float]]:
    """(label, rule or None, hours) per change window, hours from the rule in force where there is one."""
    out = []
    for label, rule_id, hours in WEIGHT_WINDOWS:
        rule = rules.get(rule_id) if rule_id else None
        out.append((label, rule, float(rule.params.get("window_hours", hours)) if rule else hours))
    return out


def weight_summary(history: History, latest: ReadingFacts | None, windows: Sequence[tuple[str, Rule | None, float]],
                   now: datetime) -> dict[str, Any]:
    """Weight change as the rate rules measure it: the latest reading minus the lowest reading in the
    ``hours`` before it (itself left out, the window's start excluded: :meth:`Series.window` called as
    ``weight_gain_24h``/``weight_gain_7d`` call it), so the change beside a "+2.9 kg in 168 h" alert is
    that 2.9. ``net_change_kg`` is the latest minus the oldest reading of the same window (a loss shows
    whole there). The slope is the least-squares fit of the 30 days up to the latest reading, kg/week."""
    if latest is None:
        return {"latest_kg": None, "latest_at": None, "latest_reading_id": None,
                "change_kg": {label: None for label, _, _ in windows}, "change_basis": _WEIGHT_BASIS,
                "changes": [], "slope_kg_per_week": None, "readings_30_days": 0}
    value = latest.values["body_weight"]
    series = history.get((latest.patient_id, "body_weight"), EMPTY)
    changes = []
    for label, rule, hours in windows:
        since = latest.measured_at - timedelta(hours=hours)
        earlier = series.window(since, latest.measured_at, include_end=False, exclude=latest.reading_id)
        lowest = float(earlier.min()) if len(earlier) else None
        changes.append({
            "label": label, "hours": hours, "since": since, "until": latest.measured_at, "readings": len(earlier),
            "from_kg": _round(lowest, 2), "change_kg": None if lowest is None else round(value - lowest, 2),
            "net_change_kg": round(value - float(earlier[0]), 2) if len(earlier) else None,
            "threshold_kg": rule.conditions[0].value if rule and rule.conditions else None,
            "rule": rule_state(rule, latest, history, now) if rule else None,
        })
    start = latest.measured_at - timedelta(days=30)
    low = int(np.searchsorted(series.t, start.timestamp(), side="right"))
    high = int(np.searchsorted(series.t, latest.measured_at.timestamp(), side="right"))
    t, v = series.t[low:high], series.v[low:high]
    slope = None
    if len(t) >= 2 and t[-1] > t[0]:
        slope = round(float(np.polyfit((t - t[0]) / 86400.0, v, 1)[0]) * 7, 3)
    return {"latest_kg": round(value, 2), "latest_at": latest.measured_at, "latest_reading_id": latest.reading_id,
            "change_kg": {c["label"]: c["change_kg"] for c in changes}, "change_basis": _WEIGHT_BASIS,
            "changes": changes, "slope_kg_per_week": slope, "readings_30_days": len(t)}


_WEIGHT_BASIS = ("latest reading minus the lowest reading in the window before it, as the weight-gain rate rules"
                 " measure it (rules weight_gain_24h and weight_gain_7d; 30 days measured the same way)")


AGP_SLOT_MINUTES = 15
AGP_PERCENTILES = (5, 25, 50, 75, 95)
AGP_MAX_COVER = timedelta(minutes=AGP_SLOT_MINUTES)
"""The most time one glucose reading counts for in ``percent_time_with_data``: a CGM reading every 5 or
15 min covers the time to the next one; a finger-stick reading hours from the next covers one slot."""


def agp(minutes: np.ndarray, values: np.ndarray, times: np.ndarray, days: int, pool_slots: int = 0) -> dict[str, Any]:
    """Ambulatory glucose profile (modal day): the 5/25/50/75/95th percentiles of the glucose values whose
    local time of day (``minutes`` after local midnight) falls in each 15-min slot, 96 slots from 00:00.
    Percentiles by linear interpolation (numpy's default, PostgreSQL's ``percentile_cont``); raw per slot,
    or with ``pool_slots`` = k each slot pools the readings of the k slots either side (wrapping at
    midnight), a (2k+1) x 15-min moving window. ``times`` (epoch s, any order) give the data coverage."""
    slots_per_day = 24 * 60 // AGP_SLOT_MINUTES
    slot = np.asarray(minutes, dtype=int) // AGP_SLOT_MINUTES
    values = np.asarray(values, dtype=float)
    order = np.lexsort((values, slot))
    slot_sorted, value_sorted = slot[order], values[order]
    bounds = np.searchsorted(slot_sorted, np.arange(slots_per_day + 1))
    out = []
    for s in range(slots_per_day):
        if pool_slots:
            parts = [value_sorted[bounds[k % slots_per_day]:bounds[k % slots_per_day + 1]]
                     for k in range(s - pool_slots, s + pool_slots + 1)]
            chunk = np.concatenate(parts)
        else:
            chunk = value_sorted[bounds[s]:bounds[s + 1]]
        entry: dict[str, Any] = {"minute": s * AGP_SLOT_MINUTES}
        if len(chunk):
            for p, q in zip(AGP_PERCENTILES, np.percentile(chunk, AGP_PERCENTILES), strict=True):
                entry[f"p{p}"] = round(float(q), 1)
        else:
            entry.update({f"p{p}": None for p in AGP_PERCENTILES})
        entry["n"] = len(chunk)
        out.append(entry)
    times = np.sort(np.asarray(times, dtype=float))
    covered = 0.0
    if len(times):
        cap = AGP_MAX_COVER.total_seconds()
        covered = float(np.minimum(np.diff(times), cap).sum()) + cap  # the last reading: one slot
    percent_time = round(min(100.0, 100.0 * covered / (days * 86400)), 1) if days else None
    return {"readings": len(values), "slot_minutes": AGP_SLOT_MINUTES, "percentiles": list(AGP_PERCENTILES),
            "percent_time_with_data": percent_time, "slots": out}


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
