"""What the patient's own routes answer (issue 20, contract20): one shape per route, ``TypedDict``s as in
:mod:`cloud.api.models`, so ``/openapi.json`` says what the patient's page gets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NotRequired

from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from cloud.api.models import documented


@documented
class Me(TypedDict):
    role: str
    subject: str
    name: NotRequired[str | None]
    """The ``name`` claim of the token, where the identity provider gives one."""
    patient_id: NotRequired[str | None]
    display_name: NotRequired[str | None]
    timezone: NotRequired[str | None]


class LatestValue(TypedDict):
    text: str
    """The value with its unit as people write it: ``138/86 mmHg``."""
    at: datetime


class Chart(TypedDict):
    metric: str
    """For ``GET /v1/patients/{patient_id}/trends/{metric}``."""
    unit_text: str
    label: str


@documented
class Measure(TypedDict):
    metric_group: Literal["blood_pressure", "glucose", "weight", "heart_rate", "spo2", "temperature"]
    title: str
    latest: LatestValue | None
    sentence: str
    """What the numbers mean, in everyday words, from the categories and windows the alert rules use."""
    status: Literal["ok", "attention", "urgent", "unknown"]
    charts: list[Chart]


class PatientDevice(TypedDict):
    uid: str
    name: str
    type_text: str
    battery_pct: float | None
    last_reading_at: datetime | None
    gateway_id: str | None


class PatientGateway(TypedDict):
    gateway_id: str
    state: Literal["connected", "waiting_for_internet", "offline", "unknown"]
    text: str
    since: datetime | None
    """When it was last heard from, for a gateway not connected."""


@documented
class Overview(TypedDict):
    patient_id: str
    display_name: str | None
    timezone: str
    measures: list[Measure]
    devices: list[PatientDevice]
    gateways: list[PatientGateway]


class Member(TypedDict):
    subject: str
    name: str | None
    role: str


@documented
class Grant(TypedDict):
    consent_id: int
    care_team_id: str
    care_team_name: str
    scopes: list[str]
    scopes_text: str
    """``readings, alerts and your record summary``."""
    granted_at: datetime
    expires_at: datetime | None
    members: list[Member]
    revoked_at: NotRequired[datetime | None]
    """Past grants only: when it was withdrawn (None: it ran out at ``expires_at``)."""


@documented
class Access(TypedDict):
    patient_id: str
    grants: list[Grant]
    """Active now: each of these care teams sees what its scopes say, until ``expires_at``."""
    past: list[Grant]
    """Withdrawn or run out, newest first (the newest 100)."""


@documented
class Invite(TypedDict):
    code: str
    """8 Crockford base32 characters shown as ``XXXX-XXXX``: given to the patient, never stored."""
    expires_at: datetime


@documented
class AccessLogEntry(TypedDict):
    at: datetime
    who: str
    """``Dr Ada (Team North)``."""
    what: str
    """``your blood pressure readings``."""
    outcome_text: Literal["looked", "changed", "was refused"]


@documented
class AccessLog(TypedDict):
    patient_id: str
    entries: list[AccessLogEntry]
    next_before: int | None
    """Pass as ``before`` for the next (older) page; None on the last page."""


@documented
class ClosureRequest(TypedDict):
    status: Literal["pending", "none"]
    """``none``: nothing requested yet (GET); what would be kept and removed is said either way."""
    requested_at: datetime | None
    reason: str | None
    kept: list[str]
    removed: list[str]


@documented
class FirstTimeLink(TypedDict):
    url: str
    """``{public_url}/ui/me#first-time={token}``: single use; the token is in the fragment, so no server log or
    Referer header carries it."""
    expires_at: datetime


@documented
class FirstTimeToken(TypedDict):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    patient_id: str
