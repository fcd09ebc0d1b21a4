"""The wire contract between gateways and the cloud (fixed: one definition, imported by cloud and sims).

A gateway publishes a :class:`Batch` of :class:`Reading` on ``rpm/v1/gw/{gateway_id}/readings``; the
cloud answers with an :class:`Ack` on ``rpm/v1/gw/{gateway_id}/acks`` after its database commit. The
gateway's retained :class:`GatewayStatus` lives on ``rpm/v1/gw/{gateway_id}/status``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from gateway.metrics import FLAGS, METRICS, Kind

PROTOCOL_VERSION = 1
TOPIC_PREFIX = "rpm/v1"
READINGS_FILTER = f"{TOPIC_PREFIX}/gw/+/readings"
INGEST_SHARE_GROUP = "ingest"
INGEST_SUBSCRIPTION = f"$share/{INGEST_SHARE_GROUP}/{READINGS_FILTER}"
MAX_READINGS_PER_BATCH = 5000
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
PRIORITY_PAYLOAD_BYTES = 16 * 1024
"""Readings messages this small are taken first by ingest, before larger ones (a backlog): while a
backlog drains, gateways send their newest readings in messages of at most this size."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Identifier = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
"""Gateway, patient and batch ids: safe in an MQTT topic level (no ``/``, ``+``, ``#``)."""


def readings_topic(gateway_id: str) -> str:
    return f"{TOPIC_PREFIX}/gw/{gateway_id}/readings"


def acks_topic(gateway_id: str) -> str:
    return f"{TOPIC_PREFIX}/gw/{gateway_id}/acks"


def status_topic(gateway_id: str) -> str:
    return f"{TOPIC_PREFIX}/gw/{gateway_id}/status"


def config_topic(gateway_id: str) -> str:
    """Cloud → gateway, retained, QoS 1: ``{"version": int, "config": {...}}`` (issue 19, remote configuration)."""
    return f"{TOPIC_PREFIX}/gw/{gateway_id}/config"


def alerts_topic(patient_id: str) -> str:
    return f"{TOPIC_PREFIX}/alerts/{patient_id}"


_TOPIC_GATEWAY = re.compile(rf"^{TOPIC_PREFIX}/gw/([^/]+)/(readings|acks|status)$")


def gateway_id_from_topic(topic: str) -> str | None:
    match = _TOPIC_GATEWAY.match(topic)
    return match.group(1) if match else None


class Transport(StrEnum):
    BLE = "ble"
    USB = "usb"


class ClockJudgement(StrEnum):
    """How the gateway judged the device's clock when it computed ``measured_at``."""

    DEVICE = "device"
    """Device time taken as it is (the clock agreed with the gateway's, or could not be compared)."""
    CORRECTED = "corrected"
    """Device time shifted by the offset measured between device and gateway clocks at connect."""
    GATEWAY = "gateway"
    """Device time unknown or implausible: the gateway's receive time was used (flag ``clock_unset``)."""


class ContractModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, str_max_length=4096)


EARLIEST_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2100, 1, 1, tzinfo=UTC)
"""Every UTC instant in the contract (``measured_at``, ``received_at``, ``sent_at``, a status's ``at``,
a device's ``last_seen``, an alert's times) lies in [2000-01-01, 2100-01-01) UTC. These are times the
gateway or the cloud computed, never a device's raw clock: none of the supported devices existed
before 2000, and the gateway replaces implausible device times (before 2010, in the future) by its
own receive time. A fixed range (not "now ± x") keeps validation a pure function of the message.
A device's own ``device_time`` is evidence, not a computed time: see :class:`Reading`."""


def _utc(value: datetime) -> datetime:
    # A year-1 time with a positive offset (or year 9999 with a negative one) has no UTC form:
    # astimezone raises OverflowError, which pydantic does not turn into a ValidationError.
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("timestamp has no UTC form (outside the datetime range after its offset)") from None
    if not (EARLIEST_INSTANT <= utc < LATEST_INSTANT):
        raise ValueError(f"timestamp {utc.isoformat()} is outside {EARLIEST_INSTANT:%Y-%m-%d}"
                         f"..{LATEST_INSTANT:%Y-%m-%d} UTC")
    return utc


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0 controls (NUL among them), DEL, C1 controls and lone surrogates (JSON can carry ``\\ud800``)."""


PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""Checked by pydantic-core itself (once per string on ingest's hot path, no Python call); a lone
surrogate never gets that far (the JSON parser and the str conversion refuse it). PostgreSQL text
refuses NUL: a string with one would make the database refuse the reading after validation."""


def unprintable_reason(value: str) -> str | None:
    """Which character makes ``value`` unprintable, in words (it names the character, never echoes
    it); None when there is none. Turns a pattern mismatch into a reason a person can act on."""
    bad = _UNPRINTABLE.search(value)
    if bad is None:
        return None
    return f"control character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed"


DeviceText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN)]
"""A string a device reported about itself (model, serial, manufacturer): printable, 1..64 characters.
The gateway cleans these (strips NUL and control characters, caps the length); ingest checks again."""
DeviceUid = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)]
ProfileName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN)]
UnitText = Annotated[str, StringConstraints(max_length=32, pattern=PRINTABLE_PATTERN)]


def _scrubbed(value: str) -> str:
    # Free text in a status (an exception's message, a storage notice) may quote what a device sent:
    # refusing it would lose the whole status, and with it the storage state and the per-device
    # counts the care team's technical alerts come from. It is shown, never parsed: clean it instead.
    return _UNPRINTABLE.sub(" ", value)


StatusText = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_scrubbed)]
"""Free text in a gateway status: control characters become spaces (PostgreSQL's jsonb refuses a NUL)."""


class Device(ContractModel):
    uid: DeviceUid
    """Stable identity: ``ble:<address>``, ``usb:<vid>:<pid>:<serial>``, ``ant:<device number>``."""
    transport: Transport
    profile: ProfileName
    model: DeviceText | None = None
    serial: DeviceText | None = None
    manufacturer: DeviceText | None = None


class Clock(ContractModel):
    judgement: ClockJudgement
    offset_s: float | None = None
    """Device clock minus gateway clock at connect, in seconds, where it was measured."""


class Value(ContractModel):
    value: float | list[float]
    unit: UnitText
    original_value: float | list[float] | None = None
    original_unit: UnitText | None = None


def compute_reading_id(
    device_uid: str,
    kind: str,
    user_index: int | None,
    *,
    sequence: int | None = None,
    device_time: datetime | None = None,
    raw_values: dict[str, Any] | None = None,
    discriminator: str | None = None,
) -> str:
    """The deterministic id of one device record.

    Built from the device's identity and the record's own identity: its sequence number where the
    device has one, else the device's own raw time and values (never the corrected time, which moves
    when the clock estimate moves). ``discriminator`` covers records with neither (a live heart-rate
    window: its start). Reading the same record from device memory twice gives the same id.
    """
    if sequence is not None:
        record: dict[str, Any] = {"seq": sequence}
    else:
        record = {
            "t": device_time.isoformat() if device_time else None,
            "v": raw_values or {},
            "d": discriminator,
        }
        if record["t"] is None and not record["v"] and discriminator is None:
            raise ValueError("a reading id needs a sequence number, a device time, values or a discriminator")
    key = json.dumps([device_uid, kind, user_index, record], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


_VALUE_RULES: dict[str, tuple[Kind, str, bool, float | None, float | None]] = {
    name: (m.kind, m.unit, m.is_list, *(m.limits if m.limits is not None else (None, None)))
    for name, m in METRICS.items()
}
"""Per metric: kind, canonical unit, is_list, limits (the catalogue flattened for the hot check)."""


class Reading(ContractModel):
    id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    device: Device
    user_index: Annotated[int, Field(ge=0, le=254)] | None = None
    kind: Kind
    measured_at: UtcDatetime
    """Corrected time of measurement, UTC."""
    received_at: UtcDatetime | None = None
    """When the gateway received it, UTC."""
    device_time: datetime | None = None
    """The device's own (naive, local) time, as the device reported it. Any naive datetime (years
    1..9999) is accepted: a device with an unset clock says 2000-01-01, a BLE Date Time can say 1582 or
    9999, and the gateway keeps it beside its own judgement (``clock``, flag ``clock_unset``). Being
    naive it needs no offset arithmetic; the cloud stores and shows it, and never computes with it."""
    clock: Clock
    sequence: Annotated[int, Field(ge=0)] | None = None
    values: dict[str, Value]
    flags: list[str] = Field(default_factory=list)
    raw: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{2})*$", max_length=8192)] = ""
    """Hex of the original frame, for audit."""
    body_site: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")] | None = None
    """Where on the body the device measured, as the device says it (a thermometer's Temperature Type,
    HTS 3.1.1.3: ``armpit``, ``ear``, ``mouth``, ``rectum``, ``tympanum``…, ``reserved_N`` for a code this
    gateway does not know). Optional and additive: a cloud that does not know it ignores nothing it
    needs."""

    @field_validator("device_time")
    @classmethod
    def _device_time_naive(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("device_time is the device's own naive local time; it must carry no UTC offset")
        return value

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, flags: list[str]) -> list[str]:
        unknown = sorted(set(flags) - FLAGS)
        if unknown:
            raise ValueError(f"unknown flag(s) {unknown}")
        return flags

    @model_validator(mode="after")
    def _values_match_catalogue(self) -> Reading:
        # Runs once per reading on ingest's hot path: a flat check of the usual, valid case first;
        # anything it does not pass is judged again below, which raises the precise message.
        kind = self.kind
        for name, value in self.values.items():
            rule = _VALUE_RULES.get(name)
            if rule is None or rule[0] != kind or value.unit != rule[1]:
                break
            number, low, high = value.value, rule[3], rule[4]
            if type(number) is list:
                if not rule[2] or (low is not None and not all(low <= n <= high and math.isfinite(n)
                                                               for n in number)):
                    break
            elif rule[2] or (low is not None and not (low <= number <= high and math.isfinite(number))):
                break
        else:
            if self.values or "measurement_unsuccessful" in self.flags:
                return self
        return self._judge_values()

    def _judge_values(self) -> Reading:
        if not self.values and "measurement_unsuccessful" not in self.flags:
            raise ValueError("a reading without values must carry the flag measurement_unsuccessful")
        for name, value in self.values.items():
            metric = METRICS.get(name)
            if metric is None:
                raise ValueError(f"values.{name}: unknown metric")
            if metric.kind != self.kind:
                raise ValueError(f"values.{name}: metric belongs to kind {metric.kind}, not {self.kind}")
            if value.unit != metric.unit:
                raise ValueError(f"values.{name}: unit must be canonical {metric.unit!r}, got {value.unit!r}")
            numbers = value.value if isinstance(value.value, list) else [value.value]
            if metric.is_list != isinstance(value.value, list):
                raise ValueError(f"values.{name}: {'a list' if metric.is_list else 'a single number'} expected")
            if metric.limits is not None:
                low, high = metric.limits
                for number in numbers:
                    if not (low <= number <= high) or not math.isfinite(number):
                        raise ValueError(f"values.{name}: {number} {metric.unit} is outside {low}..{high}")
        return self


class Batch(ContractModel):
    v: Literal[1] = PROTOCOL_VERSION
    gateway_id: Identifier
    batch_id: Identifier
    sent_at: UtcDatetime
    readings: Annotated[list[Reading], Field(min_length=1, max_length=MAX_READINGS_PER_BATCH)]


class Rejection(ContractModel):
    id: str
    reason: str


class Ack(ContractModel):
    v: Literal[1] = PROTOCOL_VERSION
    batch_id: str
    accepted: list[str] = Field(default_factory=list)
    """Ids now safely stored (including ones stored before: a replay is confirmed, not rejected)."""
    rejected: list[Rejection] = Field(default_factory=list)


class DeviceStatus(ContractModel):
    uid: DeviceUid
    profile: ProfileName
    last_seen: UtcDatetime | None = None
    battery: Annotated[int, Field(ge=0, le=100)] | None = None
    clock_offset_s: float | None = None
    error: StatusText | None = None
    quarantined: Annotated[int, Field(ge=0)] = 0
    """Records of this device the gateway could not turn into readings (kept in its device quarantine)."""


# --- device candidates (issue 19, H11) ----------------------------------------------------------------

CandidateText = Annotated[str, StringConstraints(max_length=128), AfterValidator(_scrubbed)]
"""What a device announces about itself (BLE local name, USB strings): shown, never parsed; cleaned."""
MAX_CANDIDATES_IN_STATUS = 50


class Candidate(ContractModel):
    """A health device the gateway heard (BLE, during a pairing window or while unclaimed) or found
    plugged in (USB) that nobody has confirmed or ignored yet. It is never connected and none of its
    readings are taken until someone confirms it (the gateway's local page, ``rpm-gateway pair``, or
    the cloud's ``devices.confirmed`` in the gateway's config document)."""

    uid: DeviceUid
    """The uid its readings would carry once confirmed (``ble:<address>``, ``usb:<vid>:<pid>:<serial>``, or
    ``usb:<vid>:<pid>:<port>`` for a USB meter whose serial is not known yet: its readings keep that uid on
    any port once its first session has linked the serial it reports to it)."""
    transport: Transport
    profile: ProfileName
    type: CandidateText | None = None
    """What it is, in plain words ("Blood pressure monitor")."""
    make: CandidateText | None = None
    model: CandidateText | None = None
    name: CandidateText | None = None
    rssi: Annotated[int, Field(ge=-127, le=20)] | None = None
    """Signal strength of the last advertisement heard (dBm; BLE only): a neighbour's device is weak."""
    user_index: Annotated[int, Field(ge=0, le=255)] | None = None
    """The user slot of a two-user cuff or scale when it is known before confirmation; else None (the
    slot is chosen when it is confirmed)."""
    user_slots: Annotated[int, Field(ge=1, le=255)] | None = None
    """How many users the device keeps apart (cuffs and scales with a User ID field), when known."""
    first_heard: UtcDatetime
    last_heard: UtcDatetime


# --- remote configuration (issue 19, H10) -------------------------------------------------------------


class ConfigRejection(ContractModel):
    version: int
    reason: StatusText
    """Why it was not kept: invalid (the key and why) or rolled back (the part that did not come up)."""


class ConfigStatus(ContractModel):
    """Which remote config document the gateway runs, and the last one it refused or rolled back."""

    version: int | None = None
    """The running remote config version; None: none received (the TOML and defaults only)."""
    rejected: ConfigRejection | None = None
    provisioning: Literal["waiting_for_claim", "provisioned"] | None = None
    """With a bootstrap URL: still waiting for someone to claim the gateway, or provisioned; None: not used."""


class GatewayStatus(ContractModel):
    v: Literal[1] = PROTOCOL_VERSION
    gateway_id: Identifier
    online: bool
    at: UtcDatetime
    version: StatusText | None = None
    devices: list[DeviceStatus] = Field(default_factory=list)
    outbox_depth: int = 0
    outbox_oldest_age_s: float | None = None
    outbox_full: bool = False
    """New readings cannot be saved (or, with ``when_full = drop_oldest``, old ones are being dropped)."""
    quarantined: int = 0
    uplink_error: StatusText | None = None
    storage_state: Literal["ok", "low", "full", "unwritable"] = "ok"
    storage_message: StatusText | None = None
    """The storage state in plain words ("Storage full: 8 245 readings waiting to upload; new readings
    cannot be saved"), or what happened to a damaged outbox; None when there is nothing to say."""
    storage_bytes: int | None = None
    """Bytes the outbox files take on the gateway's disk."""
    storage_budget_bytes: int | None = None
    storage_free_bytes: int | None = None
    readings_lost: int = 0
    """Readings the gateway could not keep and no device will give again (live readings not saved,
    ``drop_oldest`` drops, ``max_age_days`` expiries), each counted once."""
    readings_waiting_on_devices: int = 0
    """Readings refused for lack of room that stay in their device's memory until there is room."""
    component_errors: dict[str, StatusText] = Field(default_factory=dict)
    """Gateway components (uplink, status, device managers) that failed, with the error in plain words."""
    candidates: list[Candidate] = Field(default_factory=list, max_length=MAX_CANDIDATES_IN_STATUS)
    """Health devices waiting to be confirmed or ignored (issue 19), in the order they were first heard."""
    config: ConfigStatus | None = None
    """Remote configuration: running version and the last rejection (issue 19); None: not reported."""


class Alert(ContractModel):
    """What the cloud publishes on ``rpm/v1/alerts/{patient_id}`` for care-team consumers."""

    v: Literal[1] = PROTOCOL_VERSION
    alert_id: str
    patient_id: str
    rule: str
    severity: Literal["info", "warning", "critical"]
    status: Literal["open", "updated", "acknowledged", "resolved"]
    message: str
    metric: str | None = None
    value: float | None = None
    reading_id: str | None = None
    measured_at: UtcDatetime | None = None
    late: bool = False
    flags: list[str] = Field(default_factory=list)
    at: UtcDatetime
    review_state: Literal["not_required", "pending", "reviewed"] | None = None
    """``pending``: a person must still look at it, even when ``status`` is resolved (critical alerts)."""


def now_utc() -> datetime:
    return datetime.now(UTC)
