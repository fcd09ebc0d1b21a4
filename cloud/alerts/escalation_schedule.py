"""Clock arithmetic of escalation, pure: who is on call at an instant, and quiet hours.

Schedules and quiet hours are wall-clock times in an IANA zone, because that is how a rota is written
("the week starts Monday 08:00", "quiet 22:00-07:00"): a hand-off at 08:00 stays at 08:00 when the
clocks change. An instant is turned into the zone's wall-clock time once, and compared there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` naming it when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from err


def wall_clock(at: datetime, zone_name: str) -> datetime:
    """``at`` as the naive local time a clock on the wall in ``zone_name`` shows."""
    return at.astimezone(zone(zone_name)).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Shift:
    subject: str
    starts_local: datetime
    ends_local: datetime


@dataclass(frozen=True, slots=True)
class OnCallSchedule:
    """Who holds ``role`` in a care team: explicit shifts first, else the rotation."""

    role: str
    timezone: str
    rotation: tuple[str, ...] = ()
    rotation_start: datetime | None = None
    """Local wall-clock time of the first hand-off (naive)."""
    rotation_hours: int = 168
    shifts: tuple[Shift, ...] = ()

    def on_call(self, at: datetime) -> list[str]:
        """Subjects on call at ``at``: everyone whose shift covers it (overlaps page both), else the
        rotation's current holder, else nobody (before the rotation starts, or no rotation)."""
        local = wall_clock(at, self.timezone)
        covering = sorted({s.subject for s in self.shifts if s.starts_local <= local < s.ends_local})
        if covering:
            return covering
        if not self.rotation or self.rotation_start is None or local < self.rotation_start:
            return []
        turns = (local - self.rotation_start) // timedelta(hours=self.rotation_hours)
        return [self.rotation[turns % len(self.rotation)]]


def in_window(local: time, start: time, end: time) -> bool:
    """Whether wall-clock ``local`` is in [start, end); the window may wrap midnight (22:00-07:00)."""
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(at: datetime, zone_name: str, start: time, end: time) -> datetime | None:
    """When the quiet hours holding ``at`` end (UTC), or None when ``at`` is not in them."""
    local = wall_clock(at, zone_name)
    if not in_window(local.time(), start, end):
        return None
    ends = datetime.combine(local.date(), end)
    if ends <= local:
        ends += timedelta(days=1)
    return ends.replace(tzinfo=zone(zone_name)).astimezone(UTC)

