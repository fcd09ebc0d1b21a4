"""A care team's escalation set-up as data: contacts, on-call schedules and policies, validated here
(pydantic: the API's request bodies are these models) and read or replaced as a whole.

Replacing is all-or-nothing per part, in one transaction under the team's row lock, and returns what
changed (``before`` / ``after``, JSON-ready) for the audit log. References are checked against what is
stored: a policy's person target must be a contact, an ``on_call`` target needs a schedule for that
role, a rotation or shift names contacts; and what a policy or schedule still names cannot be removed
from under it. Policies are versioned (retired, never edited), so an escalation under way finishes with
the steps it started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud.alerts import AlertNotFound, AlertsError
from cloud.alerts import escalation_queries as q
from cloud.alerts.escalation_schedule import zone

Role = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,49}$", description="a duty: nurse, physician, team_lead, ...")]
Subject = Annotated[str, Field(min_length=1, max_length=500)]
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
PHONE = r"^\+[1-9][0-9]{6,14}$"
MAX_DELAY_S = 7 * 24 * 3600


def _valid_zone(value: str) -> str:
    zone(value)
    return value


Zone = Annotated[str, Field(min_length=1, max_length=64, description="IANA time zone"), AfterValidator(_valid_zone)]


class EscalationConfigError(AlertsError):
    """A configuration that names what does not exist (a contact, a schedule, a webhook)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique(values: Sequence[Any], what: str) -> None:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ValueError(f"{what} listed twice: {', '.join(map(str, sorted(set(seen))))}")


class Contact(_Strict):
    subject: Subject
    """The person's token subject (``sub``), or any stable id when they never sign in."""
    display_name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(None, pattern=EMAIL, max_length=320)
    phone: str | None = Field(None, pattern=PHONE, description="E.164, e.g. +4915112345678")
    webhook_id: int | None = Field(None, ge=1, description="a registered webhook (pager or chat integration)")
    roles: list[Role] = Field(default_factory=list, max_length=20)

    @field_validator("roles")
    @classmethod
    def _roles_once(cls, roles: list[str]) -> list[str]:
        _unique(roles, "role")
        return roles


class Contacts(_Strict):
    contacts: list[Contact] = Field(max_length=500)

    @model_validator(mode="after")
    def _subjects_once(self) -> Contacts:
        _unique([c.subject for c in self.contacts], "subject")
        return self


class ShiftSpec(_Strict):
    subject: Subject
    starts_local: datetime
    """Wall-clock time in the schedule's zone, without an offset."""
    ends_local: datetime

    @model_validator(mode="after")
    def _local_and_ordered(self) -> ShiftSpec:
        if self.starts_local.tzinfo is not None or self.ends_local.tzinfo is not None:
            raise ValueError("shift times are wall-clock times in the schedule's zone: give them without an offset")
        if self.ends_local <= self.starts_local:
            raise ValueError("a shift must end after it starts")
        return self


class ScheduleSpec(_Strict):
    role: Role
    timezone: Zone
    rotation: list[Subject] = Field(default_factory=list, max_length=100)
    """Subjects in turn order; each holds the role for ``rotation_hours`` from ``rotation_start`` on."""
    rotation_start: datetime | None = None
    """Local wall-clock time of the first hand-off, without an offset."""
    rotation_hours: int = Field(168, ge=1, le=24 * 366)
    shifts: list[ShiftSpec] = Field(default_factory=list, max_length=2000)
    """Explicit shifts; while one covers an instant, it (not the rotation) says who is on call."""

    @model_validator(mode="after")
    def _rotation_complete(self) -> ScheduleSpec:
        if self.rotation and self.rotation_start is None:
            raise ValueError("a rotation needs rotation_start")
        if self.rotation_start is not None and self.rotation_start.tzinfo is not None:
            raise ValueError("rotation_start is a wall-clock time in the schedule's zone: give it without an offset")
        if not self.rotation and not self.shifts:
            raise ValueError(f"the schedule for {self.role!r} has neither a rotation nor shifts")
        return self


class Schedules(_Strict):
    schedules: list[ScheduleSpec] = Field(max_length=50)

    @model_validator(mode="after")
    def _roles_once(self) -> Schedules:
        _unique([s.role for s in self.schedules], "role")
        return self


class StepSpec(_Strict):
    delay_s: int = Field(ge=0, le=MAX_DELAY_S)
    """Seconds after the alert (had earlier steps gone out on time) this step is sent."""
    target_type: Literal["person", "role", "on_call"]
    target: str = Field(min_length=1, max_length=500)
    """A contact's subject (person), or a role (role: every contact with it; on_call: who holds it now)."""
    channels: list[Literal["email", "provider", "webhook"]] = Field(min_length=1, max_length=3)

    @field_validator("channels")
    @classmethod
    def _channels_once(cls, channels: list[str]) -> list[str]:
        _unique(channels, "channel")
        return channels


class PolicySpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    categories: list[Literal["clinical", "technical"]] = Field(default_factory=lambda: ["clinical"], min_length=1)
    timezone: Zone = "UTC"
    """Zone of the quiet hours."""
    quiet_start: time | None = None
    """Local start of quiet hours: non-critical messages due inside them wait for their end."""
    quiet_end: time | None = None
    repeat_every_minutes: int | None = Field(None, ge=1, le=24 * 60)
    """After the last step, send it again this often while nobody acknowledges ..."""
    repeat_max: int = Field(0, ge=0, le=100)
    """... at most this many times."""
    steps: list[StepSpec] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _consistent(self) -> PolicySpec:
        _unique(list(self.categories), "category")
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError("quiet hours need both quiet_start and quiet_end")
        if self.quiet_start is not None and self.quiet_start == self.quiet_end:
            raise ValueError("quiet_start and quiet_end must differ")
        if self.repeat_max and self.repeat_every_minutes is None:
            raise ValueError("repeat_max needs repeat_every_minutes")
        delays = [s.delay_s for s in self.steps]
        if delays != sorted(delays):
            raise ValueError("step delays must not decrease (each step comes after the one before)")
        return self


class Policies(_Strict):
    policies: list[PolicySpec] = Field(max_length=20)
    """In order: an alert follows the first policy whose severity and category match."""


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime | time):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value
    return [plain(r) for r in rows]


def _team_locked(conn: Any, team: str) -> None:
    if not q.lock_team(conn, team):
        raise AlertNotFound(f"care team {team}")


def _targets(conn: Any, team: str, target_type: str) -> set[str]:
    return {s["target"] for p in q.active_policies(conn, team) for s in p["steps"] if s["target_type"] == target_type}


def get_config(conn: Any, team: str) -> dict[str, Any]:
    return {"care_team_id": team, "policies": q.active_policies(conn, team), "contacts": q.all_contacts(conn, team),
            "schedules": q.all_schedules(conn, team)}


def replace_contacts(conn: Any, team: str, body: Contacts, by: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with conn.transaction():
        _team_locked(conn, team)
        wanted = [c.webhook_id for c in body.contacts if c.webhook_id is not None]
        missing = sorted(set(wanted) - q.existing_webhooks(conn, wanted))
        if missing:
            raise EscalationConfigError(f"no webhook with id {', '.join(map(str, missing))}")
        before = q.all_contacts(conn, team)
        named = _targets(conn, team, "person")
        for schedule in q.all_schedules(conn, team):
            named |= {*schedule["rotation"], *(shift["subject"] for shift in schedule["shifts"])}
        dropped = named - {c.subject for c in body.contacts}
        if dropped:
            raise EscalationConfigError("still named by a policy step or an on-call schedule (change those first): "
                                        + ", ".join(sorted(dropped)))
        q.replace_contacts(conn, team, [c.model_dump() for c in body.contacts], by, now)
        after = q.all_contacts(conn, team)
    return _change("contacts", team, before, after)


def replace_schedules(conn: Any, team: str, body: Schedules, by: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with conn.transaction():
        _team_locked(conn, team)
        known = {c["subject"] for c in q.all_contacts(conn, team)}
        named = {s for sch in body.schedules for s in [*sch.rotation, *(x.subject for x in sch.shifts)]}
        if named - known:
            raise EscalationConfigError(f"not a contact of care team {team}: {', '.join(sorted(named - known))}")
        dropped = _targets(conn, team, "on_call") - {s.role for s in body.schedules}
        if dropped:
            raise EscalationConfigError(f"a policy step escalates to who is on call as {', '.join(sorted(dropped))}:"
                                        " keep its schedule, or change the policy first")
        before = q.all_schedules(conn, team)
        q.replace_schedules(conn, team, [s.model_dump() for s in body.schedules], by, now)
        after = q.all_schedules(conn, team)
    return _change("schedules", team, before, after)


def replace_policies(conn: Any, team: str, body: Policies, by: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with conn.transaction():
        _team_locked(conn, team)
        contacts = {c["subject"] for c in q.all_contacts(conn, team)}
        roles = {s["role"] for s in q.all_schedules(conn, team)}
        problems = []
        for i, policy in enumerate(body.policies):
            for j, step in enumerate(policy.steps):
                if step.target_type == "person" and step.target not in contacts:
                    problems.append(f"policies[{i}].steps[{j}]: {step.target!r} is not a contact of the team")
                if step.target_type == "on_call" and step.target not in roles:
                    problems.append(f"policies[{i}].steps[{j}]: no on-call schedule for role {step.target!r}")
        if problems:
            raise EscalationConfigError("; ".join(problems))
        before = q.active_policies(conn, team)
        applies_from = q.retire_policies(conn, team, now) or now
        for position, policy in enumerate(body.policies):
            q.insert_policy(conn, team, position, policy.model_dump(), applies_from, by, now)
        after = q.active_policies(conn, team)
    return _change("policies", team, before, after)


def _change(part: str, team: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    return {"care_team_id": team, "changed": part, "before": _jsonable(before), "after": _jsonable(after)}
