"""What the clinician API answers: one response shape per route, so ``/openapi.json`` says what comes back.

The shapes are ``TypedDict``s validated by pydantic (``response_model=`` on each route), not
``BaseModel``s. The routes and the SQL behind them build plain dicts; a ``TypedDict`` checks and
documents such a dict and hands back a dict, so nothing is converted into objects and back, and the
JSON is the JSON the route built. That costs about a third of a ``BaseModel`` on big lists (a year of
hourly trend buckets, 10 000 twin events). A key marked ``NotRequired`` is left out of the answer
when the route leaves it out; keys come in the order declared here, which is the order the routes
build them (and, for what is read from ``jsonb``, PostgreSQL's order: shorter keys first).

A rule in force is the rule catalogue's own dataclass (``cloud.db.alert_rules.Rule``), which pydantic
validates and writes as ``Rule.as_dict()`` does, so its fields are listed once.

What the database keeps as a document (the twin's state, event data, rule parameters, alert-event
detail) is typed as far as the code that writes it fixes its shape, and open (``dict[str, Any]``)
below that. Times that arrive as text inside such documents stay text (``IsoTime``): parsing them
would change how they are written back.

The panel, readings, FHIR and export routes answer with a ``Response`` they render themselves (for
speed, or another media type); their shapes here only document it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, NotRequired

from pydantic import ConfigDict, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

# A rule in force serialises as its dataclass (the fields of ``Rule.as_dict()``, in that order).
from cloud.db.alert_rules import Rule

IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
"""A time kept as ISO 8601 text inside a stored document."""
IsoDate = Annotated[str, WithJsonSchema({"type": "string", "format": "date"})]
Number = int | float
"""A number from a stored document, written back as it was stored (an integer stays one)."""
# Field docstrings below become the fields' descriptions in the OpenAPI document.
documented = with_config(ConfigDict(use_attribute_docstrings=True))


# --- health ----------------------------------------------------------------------------------------


class HealthStatus(TypedDict):
    status: str


# --- patients --------------------------------------------------------------------------------------


class AlertCounts(TypedDict):
    """Open (not resolved) alerts by severity."""

    critical: int
    warning: int
    info: int


class Adherence(TypedDict):
    """Days with readings in the 30-day period ending today (UTC days), and the CPT 99454 16-day rule."""

    period_days: int
    days_with_readings: int
    required_days: int
    meets_16_day_rule: bool
    days_short: int


class LatestValue(TypedDict):
    """The newest value of one metric, as the twin keeps it (in ``jsonb``'s key order)."""

    unit: str | None
    flags: list[str]
    value: Number
    reading_id: str
    measured_at: IsoTime


@documented
class PatientDetail(TypedDict):
    id: str
    display_name: str | None
    birth_date: date | None
    sex: str | None
    timezone: str | None
    created_at: datetime
    latest: dict[str, LatestValue]
    categories: dict[str, dict[str, Any]]
    """Reference categories of the latest values: blood_pressure (ACC/AHA), glucose (time-in-range level), bmi."""
    devices: dict[str, dict[str, Any]]
    """By device uid: last_seen, battery, profile, user_index, assigned_from (those known)."""
    adherence: Adherence
    scopes: list[str]
    """What the caller may see of this patient (readings, alerts, twin)."""
    open_alerts: NotRequired[AlertCounts]
    """Only with the ``alerts`` scope."""


class PanelLatest(TypedDict):
    value: Number
    measured_at: IsoTime


class PanelAdherence(TypedDict):
    days_with_readings: int
    meets_16_day_rule: bool


@documented
class PanelPatient(TypedDict):
    """One row of the triage panel; what the caller's consent does not cover is null."""

    patient_id: str
    display_name: str | None
    open_alerts: AlertCounts | None
    adherence: PanelAdherence | None
    latest: dict[str, PanelLatest] | None
    categories: dict[str, str] | None
    """Category names by kind: blood_pressure, glucose, bmi."""


class Panel(TypedDict):
    """Patients in triage order: open critical, warning, info alerts, then fewest days with readings."""

    patients: list[PanelPatient]
    limit: int
    offset: int


# --- readings --------------------------------------------------------------------------------------


class ReadingDevice(TypedDict):
    uid: str
    transport: str | None
    profile: str | None
    model: str | None
    serial: str | None
    manufacturer: str | None


@documented
class ReadingValue(TypedDict):
    value: float | list[float] | None
    """In the canonical unit; a list for series metrics (e.g. rr_intervals)."""
    unit: str
    original_value: float | None
    original_unit: str | None


@documented
class Reading(TypedDict):
    id: str
    patient_id: str
    kind: str
    measured_at: datetime
    device_time: datetime | None
    """The device's own clock, without a zone, as the device reported it."""
    clock_judgement: str
    clock_offset_s: float | None
    user_index: int | None
    flags: list[str]
    late: bool
    received_at: datetime | None
    gateway_id: str
    sequence: int | None
    device: ReadingDevice
    values: dict[str, ReadingValue] | None


@documented
class ReadingsPage(TypedDict):
    patient_id: str
    readings: list[Reading]
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; null on the last page."""


# --- trends and summaries --------------------------------------------------------------------------


@documented
class TrendBucket(TypedDict):
    start: datetime
    """In the patient's time zone."""
    count: int
    mean: float | None
    min: float | None
    max: float | None
    sd: float | None
    percentiles: dict[str, float | None]
    """By name, e.g. p5, p50, p95."""


class Trend(TypedDict):
    patient_id: str
    metric: str
    unit: str
    bucket: str
    time_zone: str
    since: datetime
    until: datetime
    percentiles: list[int]
    buckets: list[TrendBucket]


class GlucoseRanges(TypedDict):
    below_54: float
    from_54_to_69: float
    from_70_to_180: float
    from_181_to_250: float
    above_250: float


class GlucoseTargets(TypedDict):
    time_in_range_over_70: bool
    below_70_under_4: bool
    below_54_under_1: bool
    above_180_under_25: bool
    above_250_under_5: bool
    cv_at_most_36: bool


@documented
class GlucoseSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    days: int
    readings: int
    days_with_data: int
    percent_days_with_data: float | None
    mean_mg_dl: float | None
    sd_mg_dl: float | None
    gmi_percent: float | None
    cv_percent: float | None
    time_in_ranges_percent: GlucoseRanges | None
    targets_met: NotRequired[GlucoseTargets]
    """Only when there are readings."""
    sufficient_data: NotRequired[bool]
    """Only when there are readings."""


class BloodPressureAverage(TypedDict):
    readings: int
    systolic: float
    diastolic: float
    pulse_rate: float | None
    category: str


class BloodPressureSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    average_7_days: BloodPressureAverage | None
    average_30_days: BloodPressureAverage | None
    morning_7_days: BloodPressureAverage | None
    evening_7_days: BloodPressureAverage | None
    morning_30_days: BloodPressureAverage | None
    evening_30_days: BloodPressureAverage | None
    aha_category: str | None
    category_source: str


WeightChange = TypedDict("WeightChange", {"1_day": float | None, "7_days": float | None, "30_days": float | None})


class WeightSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    latest_kg: float | None
    latest_at: datetime | None
    change_kg: WeightChange
    slope_kg_per_week: float | None
    readings_30_days: int


class TimeBelow(TypedDict):
    minutes: float
    percent: float
    """Share of the measured time."""


class TimeBelowThresholds(TypedDict):
    below_90: TimeBelow | None
    below_88: TimeBelow | None


@documented
class OximetryNight(TypedDict):
    night_of: date
    """The local date the night (22:00-07:59) started."""
    min_percent: float
    min_at: datetime
    readings: int
    minutes_below_90: float


@documented
class OximetrySummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    days: int
    readings: int
    latest_percent: float | None
    latest_at: datetime | None
    min_percent: float | None
    mean_percent: float | None
    measured_minutes: float
    """Each reading stands for the time to the next one, at most 10 minutes."""
    time_below: TimeBelowThresholds
    nights: list[OximetryNight]
    """Oldest first, in the patient's time zone."""


class TemperatureDay(TypedDict):
    date: date
    max_cel: float
    max_at: datetime
    readings: int
    fever: bool


@documented
class TemperatureSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    days: int
    readings: int
    latest_cel: float | None
    latest_at: datetime | None
    max_cel: float | None
    days_with_fever: int
    """Days whose maximum was at least 38.0 Cel."""
    daily: list[TemperatureDay]
    """Oldest first, days in the patient's time zone."""


class AdherencePeriod(TypedDict):
    start: date
    end: date
    days_with_readings: int
    required_days: int
    meets_16_day_rule: bool
    days_short: int


@documented
class AdherenceSummary(TypedDict):
    patient_id: str
    as_of: date
    periods: list[AdherencePeriod]
    """Newest first."""
    current: AdherencePeriod


# --- alerts and thresholds -------------------------------------------------------------------------


@documented
class Alert(TypedDict):
    id: int
    patient_id: str
    rule_id: str
    severity: str
    status: str
    message: str
    metric: str | None
    value: float | None
    reading_id: str | None
    measured_at: datetime | None
    """Of the reading that last triggered it."""
    late: bool
    flags: list[str]
    trigger_count: int
    normal_streak: int
    reopen_count: int
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    category: str
    """clinical or technical."""
    review_required: bool
    """Critical alerts (and rules that ask for it) need a person's review, even after they resolve."""
    review_state: str
    """not_required, pending or reviewed."""
    reviewed_at: datetime | None
    reviewed_by: str | None
    needs_review: bool
    """Resolved before anyone reviewed it, and it needs review: acknowledge it to review it."""


@documented
class AlertPage(TypedDict):
    alerts: list[Alert]
    next_before_id: int | None
    """Pass as ``before_id`` for the next (older) page; null on the last page."""


@documented
class AlertEvent(TypedDict):
    id: int
    alert_id: int
    at: datetime
    event: str
    """opened, updated, reopened, acknowledged, resolved or comment."""
    actor: str | None
    reading_id: str | None
    detail: dict[str, Any]


@documented
class AlertWithHistory(Alert):
    history: list[AlertEvent]
    """Oldest first."""


class RulesInForce(TypedDict):
    patient_id: str
    rules: list[Rule]


# --- devices ---------------------------------------------------------------------------------------


@documented
class DeviceAssignment(TypedDict):
    id: int
    user_index: int | None
    patient_id: str
    valid_from: IsoTime | None
    """Null: since the device was first seen."""
    valid_to: IsoTime | None


@documented
class Device(TypedDict):
    uid: str
    transport: str
    profile: str
    model: str | None
    serial: str | None
    manufacturer: str | None
    gateway_id: str | None
    """The gateway the device was last seen through."""
    first_seen: datetime
    last_seen: datetime
    battery: int | None
    bound_gateway_id: str | None
    """The gateway the device may speak through (readings from any other are refused)."""
    bound_at: datetime | None
    bound_by: str | None
    quarantined_records: int
    assignments: list[DeviceAssignment]
    """Current and future assignments."""


class DeviceList(TypedDict):
    devices: list[Device]


class PatientDevices(TypedDict):
    patient_id: str
    devices: list[Device]


class UnassignedDevice(TypedDict):
    device_uid: str
    user_index: int | None
    profile: str | None
    model: str | None
    gateway_id: str
    readings: int
    first_measured_at: datetime
    last_measured_at: datetime


class UnassignedQueue(TypedDict):
    unassigned: list[UnassignedDevice]


@documented
class AssignmentMade(TypedDict):
    assignment_id: int
    device_uid: str
    user_index: int | None
    patient_id: str
    valid_from: datetime
    readings_claimed: int
    """Queued readings (stored with no patient) that now belong to the patient."""
    closed_assignments: int


class AssignmentEnded(TypedDict):
    device_uid: str
    user_index: int | None
    closed_assignments: int


@documented
class GatewayBinding(TypedDict):
    device_uid: str
    gateway_id: str
    previous_gateway_id: str | None
    changed: bool
    gateway_known: bool
    """Whether the gateway has ever connected."""


# --- the twin --------------------------------------------------------------------------------------


class TwinCounts(TypedDict):
    readings: int
    late_readings: int
    excluded_readings: int


@documented
class TwinState(TypedDict, total=False):
    """The twin's stored state (``cloud.twin.state.empty_state``), in ``jsonb``'s key order. Every key is
    optional: a state stored by an older twin may lack one. A key the twin adds must be added here."""

    counts: TwinCounts
    latest: dict[str, LatestValue]
    devices: dict[str, dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    categories: dict[str, dict[str, Any]]
    patient_id: str
    thresholds: dict[str, dict[str, Any]]
    """Rules the care team overrode, by rule id, as recorded."""
    open_alerts: dict[str, dict[str, Any]]
    """By alert id."""
    needs_review: NotRequired[dict[str, dict[str, Any]]]
    """Alerts that resolved before anyone reviewed them and need review, by alert id, until reviewed."""
    reading_days: list[IsoDate]


class Twin(TypedDict):
    patient_id: str
    version: int
    updated_at: datetime | None
    state: TwinState
    adherence: Adherence
    thresholds_in_force: list[Rule]


class TwinEvent(TypedDict):
    version: int
    at: datetime
    event_type: str
    data: dict[str, Any]


@documented
class TwinEvents(TypedDict):
    patient_id: str
    events: list[TwinEvent]
    next_since_version: int | None
    """Pass as ``since_version`` for the next page; null on the last page."""


# --- consents, audit, care teams -------------------------------------------------------------------


class Consent(TypedDict):
    id: int
    patient_id: str
    care_team_id: str
    scopes: list[str]
    granted_at: datetime
    granted_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    active: bool


class Consents(TypedDict):
    patient_id: str
    consents: list[Consent]


@documented
class AuditEntry(TypedDict):
    id: int
    at: datetime
    subject: str
    role: str
    care_teams: list[str]
    action: str
    patients_in_request: int
    """Other patients named by the same request are counted, never listed."""
    outcome: str
    status: int | None
    request_id: str
    detail: NotRequired[dict[str, Any] | None]
    """What a write changed; only in the administrators' log."""


class AccessTrail(TypedDict):
    patient_id: str
    entries: list[AuditEntry]
    next_before_id: int | None


class AuditLog(TypedDict):
    entries: list[AuditEntry]
    next_before_id: int | None


class Team(TypedDict):
    id: str
    name: str
    created_at: datetime


class Teams(TypedDict):
    care_teams: list[Team]


class TeamMember(TypedDict):
    care_team_id: str
    subject: str
    role: str
    added_at: datetime


class TeamMembers(TypedDict):
    care_team_id: str
    members: list[TeamMember]
