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
from datetime import time as TimeOfDay  # escalation quiet hours
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


class PanelProgramme(TypedDict):
    """"Needs ``needs_days`` more days with data in the next ``days_left`` days" (issue 25)."""

    programme_id: str
    period_start: date
    period_end: date
    days_with_data: int
    target_days: int | None
    """The days the fullest device-supply code needs (99454: 16)."""
    needs_days: int | None
    days_left: int
    """Days left in the period, today included while it has no data yet."""
    reachable: bool | None


@documented
class PanelPatient(TypedDict):
    """One row of the triage panel; what the caller's consent does not cover is null."""

    patient_id: str
    display_name: str | None
    open_alerts: AlertCounts | None
    unacknowledged: int | None
    """Open alerts nobody acknowledged (null without the alerts scope, as the other alert counts)."""
    needs_review: int | None
    """Alerts that resolved before anyone reviewed them and need review."""
    missing_data: int | None
    """Open missing-data alerts."""
    device_problem: int | None
    """Open technical alerts (a device or gateway problem)."""
    adherence: PanelAdherence | None
    last_reading_at: datetime | None
    """When the newest reading was measured (null without the readings scope)."""
    latest: dict[str, PanelLatest] | None
    categories: dict[str, str] | None
    """Category names by kind: blood_pressure, glucose, bmi."""
    programme: PanelProgramme | None
    """The open programme episode's current 30-day period (null: not enrolled today, or no readings scope)."""


@documented
class PanelCounts(TypedDict):
    """Over the caller's whole panel (whatever the search, filters and page): patients each filter finds."""

    all: int
    critical: int
    unacknowledged: int
    needs_review: int
    missing_data: int
    below_16_days: int
    device_problem: int


@documented
class Panel(TypedDict):
    """One page of the caller's panel, in triage order by default: open critical, warning, info alerts, then
    fewest days with readings."""

    patients: list[PanelPatient]
    total: int
    """Patients matching the search and filters (page through them with limit and offset)."""
    counts: PanelCounts
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


@documented
class SummaryWindow(TypedDict):
    since: datetime
    until: datetime
    description: str
    """What the window is, in words (e.g. "7 days up to the latest reading, as the average rule")."""


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
    timezone: str
    """The zone whose days ``days_with_data`` counts: the patient's, else UTC."""
    timezone_source: str
    """``patient``, or why the default (UTC) is used."""
    window: SummaryWindow
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


@documented
class AgpSlot(TypedDict):
    minute: int
    """Start of the 15-min slot, minutes after local midnight (0, 15, ... 1425)."""
    p5: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    p95: float | None
    n: int
    """Readings the slot's percentiles come from (null percentiles: none)."""


@documented
class AgpSmoothing(TypedDict):
    method: str
    """``none`` (each slot's own readings) or ``pooled_neighbour_slots``."""
    pool_slots: int
    window_minutes: int
    """Width of the time-of-day window each slot's percentiles come from."""


@documented
class AgpSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    days: int
    timezone: str
    """The zone of the modal day's times: the patient's, else UTC."""
    timezone_source: str
    window: SummaryWindow
    smoothing: AgpSmoothing
    percentile_method: str
    days_with_data: int
    sufficient_data: bool
    """At least 14 days, with data at least 70 % of the time (International Consensus on Time in Range)."""
    readings: int
    slot_minutes: int
    percentiles: list[int]
    percent_time_with_data: float | None
    """Each reading covers the time to the next one, at most one slot (15 min)."""
    slots: list[AgpSlot]
    """96 slots from local midnight."""


@documented
class BloodPressureAverage(TypedDict):
    since: datetime
    """Exclusive: the window is (since, until], as the average rule takes it."""
    until: datetime
    """The latest reading's time."""
    readings: int
    systolic: float
    diastolic: float
    pulse_rate: float | None
    category: str
    """ACC/AHA 2017 category of the average."""


@documented
class BloodPressureRuleAverage(BloodPressureAverage):
    window_days: float
    """The window of rule bp_stage2_average in force for the patient."""
    min_readings: int
    enough_readings: bool
    """Whether the rule judges this average (it needs ``min_readings`` in the window)."""


@documented
class RuleState(TypedDict):
    rule_id: str | None
    enabled: bool
    outcome: str | None
    """What the rule in force says about the latest reading: trigger, clear, hold, or null (it does not judge)."""
    message: str | None


class BloodPressureLatest(TypedDict):
    reading_id: str
    measured_at: datetime
    systolic: float | None
    diastolic: float | None
    pulse_rate: float | None
    category: str | None


@documented
class BloodPressureSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    unit_label: str
    timezone: str
    """The zone whose local hours make the morning (04-12) and evening (18-24) series."""
    timezone_source: str
    window: SummaryWindow
    latest: BloodPressureLatest | None
    """The newest judged reading before ``until``: every average ends at it."""
    latest_category: str | None
    """ACC/AHA category of the latest reading alone."""
    aha_category: str | None
    """Headline: ACC/AHA category of ``rule_average``, the average the 7-day-average alert judges."""
    category_source: str
    rule_average: BloodPressureRuleAverage | None
    rule: RuleState
    """Rule bp_stage2_average's verdict on the latest reading, from the alert engine's evaluate()."""
    average_7_days: BloodPressureAverage | None
    average_30_days: BloodPressureAverage | None
    morning_7_days: BloodPressureAverage | None
    evening_7_days: BloodPressureAverage | None
    morning_30_days: BloodPressureAverage | None
    evening_30_days: BloodPressureAverage | None


WeightChange = TypedDict("WeightChange", {"1_day": float | None, "7_days": float | None, "30_days": float | None})


@documented
class WeightChangeWindow(TypedDict):
    label: str
    hours: float
    """From the rule in force (weight_gain_24h, weight_gain_7d) where one watches the window."""
    since: datetime
    until: datetime
    """The latest weigh-in: the window is (since, until), the latest reading left out, as the rate rule."""
    readings: int
    from_kg: float | None
    """The lowest reading in the window (what the rate rule measures the gain from)."""
    change_kg: float | None
    """Latest minus ``from_kg``: the gain the rate rule judges."""
    net_change_kg: float | None
    """Latest minus the oldest reading in the window."""
    threshold_kg: float | None
    rule: RuleState | None


@documented
class WeightSummary(TypedDict):
    patient_id: str
    until: datetime
    unit: str
    timezone: str
    timezone_source: str
    window: SummaryWindow
    latest_kg: float | None
    latest_at: datetime | None
    latest_reading_id: str | None
    change_kg: WeightChange
    """By window: the latest weigh-in minus the lowest before it in the window (the rate rules' measure)."""
    change_basis: str
    changes: list[WeightChangeWindow]
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
    timezone: str
    """The zone whose nights (22:00-07:59) are reported."""
    timezone_source: str
    window: SummaryWindow
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
    unit_label: str
    timezone: str
    """The zone whose days are reported."""
    timezone_source: str
    window: SummaryWindow
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
    """The day of ``until`` in the time zone."""
    timezone: str
    """The zone whose days are counted: the patient's, else UTC."""
    timezone_source: str
    window: SummaryWindow
    periods: list[AdherencePeriod]
    """Newest first."""
    current: AdherencePeriod


# --- alerts and thresholds -------------------------------------------------------------------------


@documented
class Alert(TypedDict):
    id: int
    patient_id: str
    rule_id: str
    rule_title: str | None
    """The rule's name in words ("Hypertensive crisis"), from its description."""
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


# The workspace (routes/inbox.py, migration 0590): the alert inbox across patients and assignment.


@documented
class WorkspaceAlert(Alert):
    assigned_to: str | None
    """Who on the care team took it (their token subject); null: nobody."""
    assigned_at: datetime | None
    patient_display_name: str | None


@documented
class InboxCounts(TypedDict):
    """Over the caller's whole inbox, whatever the filters."""

    all: int
    critical: int
    warning: int
    info: int
    needs_review: int
    """Resolved before anyone reviewed them."""
    unassigned: int
    assigned_to_me: int


@documented
class Inbox(TypedDict):
    alerts: list[WorkspaceAlert]
    """What needs a human: open and unacknowledged, or resolved before review; most severe first, then newest."""
    total: int
    """Alerts matching the filters."""
    counts: InboxCounts
    next_before: int | None
    """Pass as ``before`` for the next page; null on the last page."""


# Notification deliveries and message links (cloud.alerts.channels, migration 0570).


@documented
class DeliveryAttempt(TypedDict):
    attempt: int
    at: IsoTime
    outcome: str
    """sent or failed."""
    error: str | None
    """Why it failed: ``<reason>: <detail>`` (reason: config, refused, timeout, tls, auth, rejected, http, ...)."""
    duration_ms: int | None


@documented
class AlertDelivery(TypedDict):
    id: int
    channel: str
    """webhook, mqtt, email or provider."""
    webhook_id: int | None
    address: str | None
    """E-mail address or phone number (the topic for MQTT; webhooks: see webhook_id)."""
    recipient: str | None
    """Care-team member, or ``patient:<id>``."""
    audience: str | None
    kind: str | None
    """alert, escalation, patient_missing_data, patient_repeat_reading (null: an alert-change notification)."""
    escalation_id: int | None
    step: int | None
    alert_status: str
    """The alert's status the message was about."""
    status: str
    """queued, sent, failed (given up) or retrying."""
    attempt_count: int
    max_attempts: int | None
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    last_error: str | None
    attempts: list[DeliveryAttempt]
    """Oldest first."""


@documented
class AlertDetail(AlertWithHistory):
    deliveries: list[AlertDelivery]
    """Every notification of the alert on every channel, oldest first."""


@documented
class AlertLinkOpened(TypedDict):
    alert_id: int
    patient_id: str


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


@documented
class EquipmentReading(TypedDict):
    reading_id: str
    kind: str
    measured_at: datetime
    received_at: datetime | None
    clock_judgement: str | None
    """How the gateway judged the device clock for that reading."""


@documented
class EquipmentDevice(TypedDict):
    uid: str
    transport: str
    profile: str
    model: str | None
    serial: str | None
    manufacturer: str | None
    user_index: int | None
    assigned_from: datetime | None
    gateway_id: str | None
    """The gateway the device is bound to (else the one it was last seen through)."""
    first_seen: datetime
    last_seen: datetime
    """When the cloud last got a reading of the device."""
    gateway_last_heard: IsoTime | None
    """When the gateway last heard the device (its newest status)."""
    battery_percent: int | None
    battery_source: str | None
    """``gateway_status`` (the gateway's newest status) or ``device_record``; null: never reported."""
    battery_reported_at: datetime | None
    clock_offset_s: float | None
    """Device clock minus the gateway's clock, s."""
    clock_offset_source: str | None
    """``gateway_status`` or ``last_reading``."""
    error: str | None
    """The gateway's last error for the device, in plain words."""
    quarantined_records: int
    """Records of the device the gateway could not turn into readings (kept there with their bytes)."""
    last_reading: EquipmentReading | None
    """The newest reading of the device stored for this patient."""
    problems: list[str]
    """battery_low, device_error, quarantined_records, clock_off."""


@documented
class EquipmentGateway(TypedDict):
    gateway_id: str
    state: str
    """online, offline (its newest status says so), not_reporting (silent past ``online_within_s``), unknown
    (readings but never a status)."""
    online: bool
    online_within_s: float
    first_seen: datetime
    last_contact_at: datetime
    """When the cloud last received anything from the gateway (its clock, not the gateway's)."""
    last_status_at: IsoTime | None
    """The newest status's own time (the gateway's clock)."""
    reported_online: bool | None
    version: str | None
    outbox_depth: int | None
    """Readings waiting on the gateway to be acknowledged by the cloud."""
    outbox_oldest_age_s: float | None
    storage_full: bool | None
    storage_state: str | None
    storage_message: str | None
    storage_free_bytes: int | None
    readings_lost: int | None
    readings_waiting_on_devices: int | None
    quarantined: int | None
    uplink_error: str | None
    component_errors: dict[str, str]
    problems: list[str]
    """not_online, storage_full, uplink_error, component_errors, readings_lost."""


@documented
class PatientEquipment(TypedDict):
    patient_id: str
    as_of: datetime
    online_within_s: float
    battery_low_percent: int
    clock_off_s: float
    devices: list[EquipmentDevice]
    """Devices assigned to the patient now."""
    gateways: list[EquipmentGateway]
    """The gateways those devices speak through."""


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


# --- escalation (cloud/api/routes/escalation.py) ---------------------------------------------------


class EscalationStep(TypedDict):
    step: int
    delay_s: int
    target_type: str
    """``person`` (a contact's subject), ``role`` (every contact with it), ``on_call`` (who holds the role now)."""
    target: str
    channels: list[str]


@documented
class EscalationPolicy(TypedDict):
    id: int
    """A version: replacing the policies retires this row and makes new ones."""
    position: int
    name: str
    min_severity: str
    categories: list[str]
    timezone: str
    quiet_start: TimeOfDay | None
    quiet_end: TimeOfDay | None
    repeat_every_minutes: int | None
    repeat_max: int
    applies_from: datetime
    """Alerts opened before this never start escalating (kept across replacements)."""
    created_at: datetime
    created_by: str
    steps: list[EscalationStep]


class EscalationContact(TypedDict):
    subject: str
    display_name: str
    email: str | None
    phone: str | None
    webhook_id: int | None
    roles: list[str]
    updated_at: datetime
    updated_by: str


class OnCallShift(TypedDict):
    subject: str
    starts_local: datetime
    ends_local: datetime


@documented
class OnCallRota(TypedDict):
    role: str
    timezone: str
    rotation: list[str]
    rotation_start: datetime | None
    rotation_hours: int
    updated_at: datetime
    updated_by: str
    shifts: list[OnCallShift]
    on_call_now: list[str]
    """Who holds the role at the time of the request."""


class EscalationSetup(TypedDict):
    care_team_id: str
    policies: list[EscalationPolicy]
    contacts: list[EscalationContact]
    schedules: list[OnCallRota]


@documented
class AlertEscalation(TypedDict):
    id: int
    care_team_id: str
    policy_id: int
    episode: int
    step_count: int
    started_at: datetime
    next_step: int
    sent_step: int | None
    repeats: int
    next_at: datetime | None
    last_sent_at: datetime | None
    last_note: str | None
    """Why a step reached nobody, fell back, or is held by quiet hours."""
    stopped_at: datetime | None
    stop_reason: str | None


class AlertEscalations(TypedDict):
    alert_id: int
    escalations: list[AlertEscalation]


class PatientContact(TypedDict):
    id: int
    patient_id: str
    channel: str
    address: str
    opted_in_at: datetime
    opted_in_by: str
    opted_out_at: datetime | None
    opted_out_by: str | None


class PatientContacts(TypedDict):
    patient_id: str
    contacts: list[PatientContact]
