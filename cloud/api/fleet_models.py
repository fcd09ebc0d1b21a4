"""Response models of the gateway fleet's routes (``routes/gateways.py``, ``routes/bootstrap.py``): what comes
back is written down in the OpenAPI document, member by member."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class FleetDevice(_Model):
    uid: str | None
    profile: str | None
    last_seen: datetime | None
    battery_percent: int | None
    clock_offset_s: float | None
    error: str | None
    quarantined_records: int
    problems: list[str]
    """battery_low, device_error, quarantined_records, clock_off."""


class FleetConfig(_Model):
    running_version: int | None
    """What the gateway's newest status (or poll) says it runs."""
    latest_version: int | None
    """The newest document set in the cloud."""
    rejected: dict[str, Any] | None
    """The last version the gateway refused or rolled back: ``{"version", "reason"}``."""
    provisioning: str | None


class FleetCredentials(_Model):
    kind: Literal["password", "certificate"] | None
    delivered_at: datetime | None
    """When the gateway's status first came after the answer that carried them."""


class FleetGateway(_Model):
    gateway_id: str
    patient_id: str | None
    care_team_id: str | None
    claimed: bool
    claimed_at: datetime | None
    claimed_by: str | None
    state: Literal["online", "offline", "not_reporting", "unknown", "never_connected"]
    online: bool
    since: datetime | None
    """Online since (the status that said so), or offline since (that status, or the last contact)."""
    last_contact_at: datetime | None
    last_status_at: datetime | None
    first_poll_at: datetime | None
    last_poll_at: datetime | None
    software_version: str | None
    config: FleetConfig
    credentials: FleetCredentials
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    uplink_error: str | None
    component_errors: dict[str, str]
    devices: list[FleetDevice]
    candidates_count: int
    problems: list[str]
    """not_online, never_connected, uplink_error, component_errors, storage_full, config_rejected, device_problems."""


class FleetList(_Model):
    gateways: list[FleetGateway]
    limit: int
    offset: int
    next_offset: int | None
    online_within_s: float


class ClaimMade(_Model):
    gateway_id: str
    patient_id: str
    care_team_id: str | None
    claimed: bool


class ClaimReleased(_Model):
    gateway_id: str
    patient_id: str
    released: bool
    devices_unpaired: list[str]
    """The patient's devices the gateway stops reading (their assignments to the patient end; readings stay)."""
    config_version: int | None
    published: bool | None


class IdentityReleased(_Model):
    gateway_id: str
    identity_id: int
    claim_released: bool
    patient_id: str | None
    credentials_revoked: int


class RotationRequested(_Model):
    gateway_id: str
    kind: Literal["password", "certificate"]
    credential_id: int | None
    issued: bool
    """True: issued now (a password); False: signed at the gateway's next poll (a certificate)."""
    delivered_on: str


class ConfigState(_Model):
    gateway_id: str
    version: int | None
    config: dict[str, Any] | None
    set_by: str | None
    set_at: datetime | None
    reason: str | None
    published_at: datetime | None
    running_version: int | None
    rejected: dict[str, Any] | None
    acknowledged: bool
    """The gateway's status says it runs this version (or a newer one)."""
    published: bool | None = None
    """After a change: whether the broker acknowledged the retained message."""


class CandidateItem(_Model):
    model_config = ConfigDict(extra="allow")
    uid: str
    transport: str
    profile: str
    type: str | None = None
    make: str | None = None
    model: str | None = None
    name: str | None = None
    rssi: int | None = None
    user_index: int | None = None
    user_slots: int | None = None
    first_heard: datetime | None = None
    last_heard: datetime | None = None
    pending_decision: Literal["confirm", "ignore"] | None = None
    """Decided in the newest config document, not yet applied by the gateway."""


class CandidateList(_Model):
    gateway_id: str
    as_of: datetime | None
    candidates: list[CandidateItem]


class DeviceDecision(_Model):
    gateway_id: str
    uid: str
    decision: Literal["confirm", "ignore", "unpair"]
    user_index: int | None
    version: int
    published: bool
    patient_id: str | None = None
    bound_from: str | None = None
    assignment_id: int | None = None
    readings_claimed: int | None = None
    closed_assignments: int | None = None


class MqttAnswer(_Model):
    url: str
    username: str | None = None
    password: str | None = None
    client_cert_pem: str | None = None
    ca_pem: str | None = None


class PollUnclaimed(_Model):
    state: Literal["unclaimed"]
    retry_after_s: float


class PollProvisioned(_Model):
    state: Literal["provisioned"]
    gateway_id: str
    patient_id: str | None
    mqtt: MqttAnswer | None = Field(description="until the gateway's status shows it used them; then null")
    config: dict[str, Any] | None
    config_version: int | None
