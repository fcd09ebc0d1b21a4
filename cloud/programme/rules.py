"""A programme's rules as rows (migration 0620 ``programme_rules``) and the pure classification they define.

The US Medicare rules seeded (``us-cms-2026``) come from the CY 2026 Physician Fee Schedule final rule
(CMS-1832-F, 90 FR 49266, 5 Nov 2025): device supply per 30-day period anchored at enrolment, 99454 for
16-30 days and 99445 for 2-15 days (never both for one period); 99453 set-up once per episode; treatment
management per calendar month, 99470 for the first 10 minutes and 99457 for the first 20 (never both),
99458 for each further 20 past 99457's, all with at least one interactive communication in the month.
Nothing here names a code: another programme is other rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    kind: str
    """setup | device_supply | management"""
    min_days: int | None
    max_days: int | None
    min_minutes: int | None
    unit_minutes: int | None
    max_units: int | None
    add_on_to: str | None
    requires_interactive: bool
    description: str
    source: str


@dataclass(frozen=True, slots=True)
class Programme:
    id: str
    name: str
    period_days: int
    source: str
    rules: tuple[Rule, ...]

    def of_kind(self, kind: str) -> list[Rule]:
        return [r for r in self.rules if r.kind == kind]

    @property
    def target_days(self) -> int | None:
        """The days a period needs for the fullest device-supply code (99454: 16)."""
        days = [r.min_days for r in self.of_kind("device_supply") if r.min_days is not None]
        return max(days) if days else None


@dataclass(frozen=True, slots=True)
class Period:
    index: int
    """0: the episode's first period (the one set-up is reported in)."""
    start: date
    end: date
    """Last day, inclusive."""


def periods_overlapping(enrolled_on: date, period_days: int, first: date, last: date,
                        ended_on: date | None = None) -> list[Period]:
    """The device-supply periods of an episode (``enrolled_on`` + k x ``period_days``) that overlap the days
    ``first``..``last``, cut at ``ended_on`` (an episode's periods stop where it ends)."""
    if last < enrolled_on or (ended_on is not None and ended_on < first):
        return []
    k = max(0, (first - enrolled_on).days // period_days)
    out = []
    while True:
        start = enrolled_on + timedelta(days=k * period_days)
        if start > last or (ended_on is not None and start > ended_on):
            return out
        end = start + timedelta(days=period_days - 1)
        out.append(Period(k, start, end))
        k += 1


def device_supply_code(programme: Programme, days: int) -> str | None:
    """The one device-supply code a period with ``days`` days of data meets (the highest minimum reached)."""
    met = [r for r in programme.of_kind("device_supply")
           if r.min_days is not None and r.max_days is not None and r.min_days <= days <= r.max_days]
    return max(met, key=lambda r: r.min_days or 0).code if met else None


def setup_code(programme: Programme, period: Period, days: int) -> str | None:
    """Set-up is reported once per episode: in its first period, when that period has enough days."""
    if period.index != 0:
        return None
    met = [r for r in programme.of_kind("setup") if r.min_days is not None and days >= r.min_days]
    return met[0].code if met else None


@dataclass(frozen=True, slots=True)
class ManagementCodes:
    codes: dict[str, int]
    """code -> units (a base code 1, an add-on its units)."""
    reason: str | None
    """Why no code was met, when none was."""


def management_codes(programme: Programme, minutes: int, interactive: bool) -> ManagementCodes:
    """Codes for a calendar month's ``minutes`` of treatment management; ``interactive``: the month held at
    least one real-time interactive communication. The base code with the highest minimum reached wins (20
    minutes: 99457, not 99470); each add-on of that base counts whole further ``unit_minutes``."""
    rules = programme.of_kind("management")
    bases = [r for r in rules if r.add_on_to is None and r.min_minutes is not None and minutes >= r.min_minutes
             and (interactive or not r.requires_interactive)]
    if not bases:
        any_reached = any(r.add_on_to is None and r.min_minutes is not None and minutes >= r.min_minutes
                          for r in rules)
        reason = ("no interactive communication with the patient this month" if any_reached
                  else f"{minutes} minutes: below every management code's minimum")
        return ManagementCodes({}, reason)
    base = max(bases, key=lambda r: r.min_minutes or 0)
    codes = {base.code: 1}
    for add_on in rules:
        if add_on.add_on_to != base.code or not add_on.unit_minutes:
            continue
        if add_on.requires_interactive and not interactive:
            continue
        units = (minutes - (base.min_minutes or 0)) // add_on.unit_minutes
        if add_on.max_units is not None:
            units = min(units, add_on.max_units)
        if units > 0:
            codes[add_on.code] = units
    return ManagementCodes(codes, None)


def programme_from_rows(row: dict[str, object], rule_rows: Sequence[dict[str, object]]) -> Programme:
    rules = tuple(Rule(**{k: v for k, v in r.items() if k != "programme_id"}) for r in rule_rows)  # type: ignore[arg-type]
    return Programme(str(row["id"]), str(row["name"]), int(row["period_days"]), str(row["source"]),  # type: ignore[call-overload]
                     rules)
