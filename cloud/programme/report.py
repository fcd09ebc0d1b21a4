"""The month-end report: per patient, the 30-day device-supply periods overlapping the calendar month (days
with data in total and per device, the device-supply code each meets, set-up in an episode's first period),
the month's clinician minutes and the management codes they meet, who spent them, and the month's first and
last transmission. Pure: rows from :mod:`cloud.programme.queries` in, report rows out.

A period belongs to the month it ends in (``ends_in_month``): that is the month its device-supply code is
reported in, so a period spanning two months is never counted twice. A period not ended yet is
``complete: false`` (its days may still grow)."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud.programme import ProgrammeError
from cloud.programme.rules import ManagementCodes, Period, Programme, device_supply_code, management_codes, setup_code

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class InvalidMonth(ProgrammeError):
    pass


def month_bounds(month: str) -> tuple[date, date]:
    """``YYYY-MM`` -> its first and last day."""
    match = _MONTH.match(month)
    if not match:
        raise InvalidMonth("month must be YYYY-MM, e.g. 2026-03")
    year, number = int(match[1]), int(match[2])
    if not (2000 <= year <= 2100 and 1 <= number <= 12):
        raise InvalidMonth("month must be a month from 2000-01 to 2100-12")
    return date(year, number, 1), date(year, number, calendar.monthrange(year, number)[1])


def local_today(tz: str, now: datetime) -> date:
    try:
        return now.astimezone(ZoneInfo(tz)).date()
    except (ValueError, ZoneInfoNotFoundError):
        return now.astimezone(UTC).date()


class _Classifier:
    """The rules' answers for one report, remembered: 10 000 patients share a few dozen distinct inputs (days
    0-30, minutes, zones), and asking the rules once per input instead of once per period keeps building the
    rows of the largest report well under its SQL's time."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._today: dict[str, str] = {}
        self._supply: dict[tuple[str, int], str | None] = {}
        self._setup: dict[tuple[str, int], str | None] = {}
        self._management: dict[tuple[str, int, bool], ManagementCodes] = {}

    def today(self, tz: str) -> str:
        """The zone's local date, as ISO text (compared with the periods' dates)."""
        if tz not in self._today:
            self._today[tz] = local_today(tz, self._now).isoformat()
        return self._today[tz]

    def supply(self, programme: Programme, days: int) -> str | None:
        key = (programme.id, days)
        if key not in self._supply:
            self._supply[key] = device_supply_code(programme, days)
        return self._supply[key]

    def setup(self, programme: Programme, index: int, start: str, end: str, days: int) -> str | None:
        if index != 0:
            return None
        key = (programme.id, days)
        if key not in self._setup:
            period = Period(index, date.fromisoformat(start), date.fromisoformat(end))
            self._setup[key] = setup_code(programme, period, days)
        return self._setup[key]

    def management(self, programme: Programme, minutes: int, interactive: bool) -> ManagementCodes:
        key = (programme.id, minutes, interactive)
        if key not in self._management:
            self._management[key] = management_codes(programme, minutes, interactive)
        return self._management[key]


def _period(rules: _Classifier, programme: Programme, raw: Mapping[str, Any], first: str, last: str,
            today: str) -> dict[str, Any]:
    # Dates stay the ISO text PostgreSQL wrote ("YYYY-MM-DD" sorts as the dates do): turning 20 000 periods'
    # dates into objects and back into the same text cost more than classifying them.
    start, end = raw["start"], raw["end"]
    days = int(raw["days"])
    index = int(raw["index"])
    return {"index": index, "start": start, "end": end, "days_with_data": days,
            "devices": raw["devices"] or {}, "device_supply_code": rules.supply(programme, days),
            "setup_code": rules.setup(programme, index, start, end, days), "ends_in_month": first <= end <= last,
            "complete": end < today}


def build_rows(episodes: Sequence[Mapping[str, Any]], minutes: Mapping[str, Mapping[str, Any]],
               programmes: Mapping[str, Programme], first: date, last: date, now: datetime) -> list[dict[str, Any]]:
    """One row per patient (episodes of one patient in the month are one row; their periods in order)."""
    rows: dict[str, dict[str, Any]] = {}
    rules = _Classifier(now)
    first_day, last_day = first.isoformat(), last.isoformat()
    for episode in episodes:
        programme = programmes[episode["programme_id"]]
        today = rules.today(episode["tz"])
        periods = [_period(rules, programme, p, first_day, last_day, today) for p in episode["periods"]]
        row = rows.get(episode["patient_id"])
        if row is None:
            row = rows[episode["patient_id"]] = {
                "patient_id": episode["patient_id"], "display_name": episode["display_name"],
                "programme_id": programme.id, "timezone": episode["tz"], "episodes": [], "periods": [],
                "first_reading_at": None, "last_reading_at": None, "_programme": programme}
        row["episodes"].append({"id": episode["enrolment_id"], "enrolled_on": episode["enrolled_on"],
                                "ended_on": episode["ended_on"]})
        row["periods"].extend(periods)
        for key, pick in (("first_reading_at", min), ("last_reading_at", max)):
            value = episode[key]
            if value is not None:
                row[key] = value if row[key] is None else pick(row[key], value)
    out = []
    for patient_id, row in rows.items():
        programme = row.pop("_programme")
        spent = minutes.get(patient_id) or {}
        total = int(spent.get("minutes") or 0)
        interactive = bool(spent.get("interactive"))
        management = rules.management(programme, total, interactive)
        billed = [p for p in row["periods"] if p["ends_in_month"]]
        codes = [c for p in billed for c in (p["setup_code"], p["device_supply_code"]) if c]
        codes += [code if units == 1 else f"{code}x{units}" for code, units in management.codes.items()]
        # The headline period: the one the month's device-supply code is reported for (the last ending in the
        # month), else the one still running at the month's end.
        headline = billed[-1] if billed else row["periods"][-1]
        row.update({
            "period_start": headline["start"], "period_end": headline["end"],
            "days_with_data": headline["days_with_data"],
            "minutes": total, "interactive_communication": interactive,
            "activities": int(spent.get("activities") or 0),
            "management_codes": management.codes, "management_note": management.reason,
            "people": list(spent.get("people") or []), "codes": codes,
        })
        out.append(row)
    return out
