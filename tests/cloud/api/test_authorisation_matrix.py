"""The authorisation matrix: every role x every endpoint x (own / consented / readings-only / other
patient), expected status derived from the policy below, not hand-picked per case.

Policy (cloud/api/deps.py): a patient sees only their own record; clinician and care_team see a
patient while an active consent grants their team the endpoint's scope; admin configures and sees
no clinical data; gateway gets 403 everywhere. What the caller may not see is 404; what it may see
but not change is 403. Writes are authorised like reads: device assignment needs the consent of the
new patient and of every patient the device is moved away from (another team's patient: 403, an
administrator's move; admins may move any device, audited with both patients). Every write, allowed
or refused, leaves an audit row naming the patients it touched. A test enumerates ``app.routes`` so
that a route (above all a write route) without an entry here fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.alerts.channels import links
from cloud.twin import fhir
from tests.cloud.alerts.scripted_patient import bp, ingest, now
from tests.cloud.api.bulk_seed import finished_export
from tests.cloud.api.conftest import World, build_world, grant

pytestmark = pytest.mark.integration
_EPISODES = itertools.count()

ROLES = ("patient", "clinician", "care_team", "admin", "gateway")
TARGETS = ("own", "consented", "readings_only", "other")
CLINICAL = ("clinician", "care_team")
SCOPES_OF_TARGET = {"consented": {"readings", "alerts", "twin"}, "readings_only": {"readings"}}


@dataclass
class Context:
    world: World
    conn: psycopg.Connection
    target: str

    @property
    def patient(self) -> str:
        return self.world.patients[self.target]

    def open_alert(self) -> int:
        """An alert of the target not yet resolved (a crisis reading through the real hooks when needed)."""
        for _ in range(3):
            row = self.conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND status <> 'resolved'"
                                    " ORDER BY id DESC LIMIT 1", (self.patient,)).fetchone()
            if row:
                return row[0]
            device = self.world.devices[self.target]["blood_pressure"]
            ingest(self.conn, [bp(device, now() - timedelta(seconds=30), 195, 125),
                               bp(device, now() - timedelta(seconds=20), 196, 126)], self.patient)
        raise AssertionError("no open alert could be made")

    def alert_link(self) -> str:
        """The token of a fresh message deep link to an open alert of the target."""
        url = links.create_link(self.conn, self.open_alert(), "matrix", public_url="http://x", now=datetime.now(UTC))
        return url.rsplit("=", 1)[1]

    def new_device(self, assign_to: str | None = None) -> str:
        """A cuff, assigned (whole device, since ever) to ``assign_to``: a target name or a patient id."""
        uid = f"ble:{uuid.uuid4().hex[:10]}"
        self.conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'ble.blood_pressure')",
                          (uid,))
        if assign_to:
            self.conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)",
                              (uid, self.world.patients.get(assign_to, assign_to)))
        return uid

    def past_episode(self) -> dict[str, str]:
        """A closed programme episode of its own ten days (distinct per call: episodes never overlap)."""
        start = date(1990, 1, 1) + timedelta(days=10 * next(_EPISODES))
        return {"enrolled_on": start.isoformat(), "ended_on": (start + timedelta(days=9)).isoformat()}

    def open_episode(self) -> int:
        """The id of an open programme episode of the target (one is made when none is open)."""
        row = self.conn.execute("SELECT id FROM programme_enrolments WHERE patient_id = %s AND ended_on IS NULL",
                                (self.patient,)).fetchone()
        if row is None:
            row = self.conn.execute("INSERT INTO programme_enrolments (patient_id, programme_id, enrolled_on,"
                                    " created_by) VALUES (%s, 'us-cms-2026', '2099-01-01', 'matrix') RETURNING id",
                                    (self.patient,)).fetchone()
        assert row is not None
        return row[0]

    def claimed_gateway(self) -> str:
        """A gateway (pinned identity, no status yet) claimed for the target patient (issue 19)."""
        gateway = f"gw-{uuid.uuid4().hex[:12]}"
        identity = self.conn.execute(
            "INSERT INTO gateway_identities (gateway_id, public_key, claim_code_sha256) VALUES (%s, %s, %s)"
            " RETURNING id", (gateway, uuid.uuid4().bytes * 2, hashlib.sha256(gateway.encode()).hexdigest())
        ).fetchone()[0]  # type: ignore[index]
        self.conn.execute("INSERT INTO gateway_claims (gateway_id, identity_id, patient_id, claimed_by)"
                          " VALUES (%s, %s, %s, 'matrix')", (gateway, identity, self.patient))
        return gateway

    def claim_body(self) -> dict[str, str]:
        """A claim of a new unclaimed gateway for the target, with the code off its label."""
        code = uuid.uuid4().hex[:12].upper().translate(str.maketrans({"I": "1", "L": "1", "O": "0"}))
        self.conn.execute("INSERT INTO gateway_identities (gateway_id, public_key, claim_code_sha256)"
                          " VALUES (%s, %s, %s)", (f"gw-{uuid.uuid4().hex[:12]}", uuid.uuid4().bytes * 2,
                                                   hashlib.sha256(code.encode()).hexdigest()))
        return {"code": code, "patient_id": self.patient}

    def opted_in(self) -> str:
        """The path of the target's e-mail contact, opted in now (so opting out has something to end)."""
        self.conn.execute("INSERT INTO patient_contacts (patient_id, channel, address, opted_in_at, opted_in_by)"
                          " VALUES (%s, 'email', 'pt@example.org', now(), 'matrix') ON CONFLICT DO NOTHING",
                          (self.patient,))
        return f"/v1/patients/{self.patient}/contacts/email"

    def target_gateway(self) -> str:
        """The FHIR id of a gateway (new, so only this target's device is bound to it) of a target's cuff."""
        gateway = f"gw-{uuid.uuid4().hex[:10]}"
        self.conn.execute("UPDATE devices SET bound_gateway_id = %s WHERE uid = %s",
                          (gateway, self.new_device(assign_to=self.target)))
        return fhir.gateway_device_id(gateway)

    def clinician_export(self) -> str:
        """A finished bulk export of the world's team owned by its clinician (sub as ``build_world`` names it)."""
        return finished_export(self.conn, subject=f"{self.world.team.removesuffix('-team')}-dr", role="clinician",
                               team=self.world.team, directory=Path(tempfile.mkdtemp(prefix="matrix-export-")))

    def assign_to_target(self, holder: str | None, user_index: int | None = None) -> Request:
        """Assign a cuff held by ``holder`` (a target name, or None: a new device) to the target patient."""
        body: dict[str, Any] = {"patient_id": self.patient}
        if user_index is not None:
            body["user_index"] = user_index
        return f"/v1/devices/{self.new_device(assign_to=holder)}/assignments", None, body


Request = tuple[str, dict[str, Any] | None, Any]
"""(path, query params, JSON body)"""


@dataclass(frozen=True)
class Endpoint:
    method: str
    route: str
    kind: str
    """read | write (clinical change) | own (the patient's own record only) | fhir_search |
    assign | unassign | role (not about one patient) | owner (a job only its owner sees)"""
    scope: str | None
    build: Callable[[Context], Request]
    success: int = 200
    roles: tuple[str, ...] = field(default=())
    """For kind == role: the roles allowed."""
    displaces: str | None = None
    """For kind == assign: the target whose device is moved to the patient (None: a new device)."""
    label: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent besides the caller's token (a bulk kick-off needs ``Prefer: respond-async``)."""
    owner: str | None = None
    """For kind == owner (a bulk export job): the role whose user owns it; ``roles`` may own one at all."""

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}{self.label}"


def _fhir_grant(c: Context) -> dict[str, Any]:
    """A FHIR Consent granting the world's other team the target's readings (the shape GET gives back)."""
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{c.patient}"},  # our id, as searches take it
            "organization": [{"identifier": {"system": fhir.CARE_TEAM_SYSTEM, "value": c.world.other_team}}],
            "provision": {"type": "permit", "provision": [
                {"type": "permit", "code": [{"coding": [{"system": fhir.CONSENT_SCOPE_SYSTEM, "code": "readings"}]}]}]}}


def _fhir_revoke(c: Context) -> Request:
    """Revoking one of the target's consents through FHIR: the Consent as read, with status inactive."""
    consent = fhir.consent_id(grant(c.conn, c.patient, c.world.other_team, ["twin"]))
    return f"/fhir/Consent/{consent}", None, {**_fhir_grant(c), "id": consent, "status": "inactive"}


def _past_consent(c: Context) -> int:
    """A consent of the target that was granted and revoked: readable as a FHIR Consent (inactive) by its
    patient, and opening nothing, so the cases after it still see the world the policy describes."""
    consent_id = grant(c.conn, c.patient, c.world.team, ["twin"])
    c.conn.execute("UPDATE consents SET revoked_at = now(), revoked_by = 'matrix' WHERE id = %s", (consent_id,))
    return consent_id


def _p(suffix: str = "", params: dict[str, Any] | None = None) -> Callable[[Context], Request]:
    return lambda c: (f"/v1/patients/{c.patient}{suffix}", params, None)


def _h18_reading(c: Context) -> str:
    row = c.conn.execute("SELECT id FROM readings WHERE patient_id = %s LIMIT 1", (c.patient,)).fetchone()
    return f"/fhir/Observation/{row[0]}"


def _h18_flag(c: Context) -> str:
    row = c.conn.execute("SELECT id FROM alerts WHERE patient_id = %s LIMIT 1", (c.patient,)).fetchone()
    return f"/fhir/Flag/alert-{row[0]}"


def _h18_audit(c: Context) -> str:
    row = c.conn.execute("INSERT INTO audit_log (subject, role, action, patient_ids, outcome, status, request_id)"
                         " VALUES ('matrix', 'clinician', 'GET /x', ARRAY[%s], 'allowed', 200, 'matrix') RETURNING id",
                         (c.patient,)).fetchone()
    return f"/fhir/AuditEvent/audit-{row[0]}"


PATIENT_ENDPOINTS = [
    Endpoint("GET", "/v1/patients/{patient_id}", "read", "readings", _p()),
    Endpoint("GET", "/v1/patients/{patient_id}/readings", "read", "readings", _p("/readings")),
    Endpoint("GET", "/v1/patients/{patient_id}/readings", "read", "readings", _p("/readings", {"format": "csv"}),
             label=" csv"),
    Endpoint("GET", "/v1/patients/{patient_id}/trends/{metric}", "read", "readings", _p("/trends/systolic")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/glucose", "read", "readings", _p("/summaries/glucose")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/blood-pressure", "read", "readings",
             _p("/summaries/blood-pressure")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/weight", "read", "readings", _p("/summaries/weight")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/oximetry", "read", "readings", _p("/summaries/oximetry")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/temperature", "read", "readings",
             _p("/summaries/temperature")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/adherence", "read", "readings", _p("/summaries/adherence")),
    Endpoint("GET", "/v1/patients/{patient_id}/summaries/glucose/agp", "read", "readings",
             _p("/summaries/glucose/agp")),
    Endpoint("GET", "/v1/patients/{patient_id}/equipment", "read", "readings", _p("/equipment")),
    Endpoint("GET", "/v1/patients/{patient_id}/gateways", "read", "readings", _p("/gateways")),
    Endpoint("GET", "/v1/patients/{patient_id}/devices", "read", "readings", _p("/devices")),
    Endpoint("GET", "/fhir/Patient/{patient_id}", "read", "readings", lambda c: (f"/fhir/Patient/{c.patient}", None,
                                                                                None)),
    Endpoint("GET", "/fhir/Patient/{patient_id}/$everything", "read", "readings",
             lambda c: (f"/fhir/Patient/{c.patient}/$everything", None, None)),
    Endpoint("GET", "/fhir/Observation", "fhir_search", "readings",
             lambda c: ("/fhir/Observation", {"patient": f"Patient/{c.patient}"}, None)),
    Endpoint("GET", "/fhir/Device/{device_id}", "read", "readings",
             lambda c: (f"/fhir/Device/{fhir.device_id(c.world.devices[c.target]['blood_pressure'])}", None, None)),
    Endpoint("GET", "/fhir/Device/{device_id}", "read", "readings",
             lambda c: (f"/fhir/Device/{c.target_gateway()}", None, None), label=" gateway"),
    Endpoint("GET", "/fhir/Device", "fhir_search", "readings",
             lambda c: ("/fhir/Device", {"patient": f"Patient/{c.patient}"}, None)),
    # The FHIR surface of issue 22 (H18): Observation and Flag read, Flag search, the patient's own Consents
    # and AuditEvents.
    Endpoint("GET", "/fhir/Observation/{observation_id}", "read", "readings", lambda c: (_h18_reading(c), None, None)),
    Endpoint("GET", "/fhir/Flag", "fhir_search", "alerts",
             lambda c: ("/fhir/Flag", {"patient": f"Patient/{c.patient}"}, None)),
    Endpoint("GET", "/fhir/Flag/{flag_id}", "read", "alerts", lambda c: (_h18_flag(c), None, None)),
    Endpoint("GET", "/fhir/Consent/{consent_id}", "own", None,
             lambda c: (f"/fhir/Consent/consent-{_past_consent(c)}", None, None)),
    Endpoint("GET", "/fhir/AuditEvent/{auditevent_id}", "own", None, lambda c: (_h18_audit(c), None, None)),
    # Consent writes through FHIR: the patient's own record only, as /v1/patients/{id}/consents.
    Endpoint("POST", "/fhir/Consent", "own", None, lambda c: ("/fhir/Consent", None, _fhir_grant(c)), success=201),
    Endpoint("PUT", "/fhir/Consent/{consent_id}", "own", None, _fhir_revoke),
    Endpoint("GET", "/v1/alerts", "read", "alerts", lambda c: ("/v1/alerts", {"patient_id": c.patient}, None),
             label=" ?patient_id"),
    Endpoint("GET", "/v1/alerts/{alert_id}", "read", "alerts", lambda c: (f"/v1/alerts/{c.open_alert()}", None, None)),
    Endpoint("POST", "/v1/alert-links/{token}/open", "write", "alerts",
             lambda c: (f"/v1/alert-links/{c.alert_link()}/open", None, None)),
    Endpoint("POST", "/v1/alerts/{alert_id}/acknowledge", "write", "alerts",
             lambda c: (f"/v1/alerts/{c.open_alert()}/acknowledge", None, {"note": "seen"})),
    Endpoint("POST", "/v1/alerts/{alert_id}/resolve", "write", "alerts",
             lambda c: (f"/v1/alerts/{c.open_alert()}/resolve", None, None)),
    Endpoint("POST", "/v1/alerts/{alert_id}/assign", "write", "alerts",
             lambda c: (f"/v1/alerts/{c.open_alert()}/assign", None, {"to": "me"})),
    Endpoint("POST", "/v1/alerts/{alert_id}/comments", "write", "alerts",
             lambda c: (f"/v1/alerts/{c.open_alert()}/comments", None, {"text": "called the patient"}), success=201),
    Endpoint("GET", "/v1/patients/{patient_id}/thresholds", "read", "alerts", _p("/thresholds")),
    Endpoint("PUT", "/v1/patients/{patient_id}/thresholds/{rule_id}", "write", "alerts",
             lambda c: (f"/v1/patients/{c.patient}/thresholds/bp_crisis", None, {"thresholds": {"systolic": 175}})),
    Endpoint("DELETE", "/v1/patients/{patient_id}/thresholds/{rule_id}", "write", "alerts",
             _p("/thresholds/bp_crisis")),
    # Escalation: an alert's escalations; the patient's contacts, changed by the patient or the care team.
    Endpoint("GET", "/v1/alerts/{alert_id}/escalations", "read", "alerts",
             lambda c: (f"/v1/alerts/{c.open_alert()}/escalations", None, None)),
    Endpoint("GET", "/v1/patients/{patient_id}/contacts", "read", "alerts", _p("/contacts")),
    Endpoint("PUT", "/v1/patients/{patient_id}/contacts/{channel}", "read", "alerts",
             lambda c: (f"/v1/patients/{c.patient}/contacts/email", None, {"address": "pt@example.org"}),
             label=" (opt in: the patient or the care team)"),
    Endpoint("DELETE", "/v1/patients/{patient_id}/contacts/{channel}", "read", "alerts",
             lambda c: (c.opted_in(), None, None), label=" (opt out: the patient or the care team)"),
    Endpoint("GET", "/v1/patients/{patient_id}/twin", "read", "twin", _p("/twin")),
    Endpoint("GET", "/v1/patients/{patient_id}/twin/events", "read", "twin", _p("/twin/events")),
    Endpoint("GET", "/v1/patients/{patient_id}/consents", "own", None, _p("/consents")),
    Endpoint("POST", "/v1/patients/{patient_id}/consents", "own", None,
             lambda c: (f"/v1/patients/{c.patient}/consents", None,
                        {"care_team_id": c.world.other_team, "scopes": ["readings"]}), success=201),
    Endpoint("DELETE", "/v1/patients/{patient_id}/consents/{consent_id}", "own", None,
             lambda c: (f"/v1/patients/{c.patient}/consents/"
                        f"{grant(c.conn, c.patient, c.world.other_team, ['twin'])}", None, None)),
    Endpoint("GET", "/v1/patients/{patient_id}/audit", "own", None, _p("/audit")),
    # The patient's page (issue 20): overview in words, who has access, who looked, closing the account.
    Endpoint("GET", "/v1/patients/{patient_id}/overview", "own", None, _p("/overview")),
    Endpoint("GET", "/v1/patients/{patient_id}/access", "own", None, _p("/access")),
    Endpoint("GET", "/v1/patients/{patient_id}/access-log", "own", None, _p("/access-log")),
    Endpoint("GET", "/v1/patients/{patient_id}/closure-request", "own", None, _p("/closure-request")),
    Endpoint("POST", "/v1/patients/{patient_id}/closure-request", "own", None,
             lambda c: (f"/v1/patients/{c.patient}/closure-request", None, {"reason": "moving away"}), success=202),
    # A first-time sign-in link is the care team's to make, with the patient's consent (the patient: 403).
    Endpoint("POST", "/v1/patients/{patient_id}/first-time-links", "write", "readings",
             lambda c: (f"/v1/patients/{c.patient}/first-time-links", None, {"expires_in_hours": 2}), success=201),
    # Gateways (issue 19): seen and changed through the claimed patient's consent; administrators: all of them.
    Endpoint("POST", "/v1/gateways/claim", "write", "readings", lambda c: ("/v1/gateways/claim", None, c.claim_body()),
             success=201),
    Endpoint("GET", "/v1/gateways/{gateway_id}", "gateway_read", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}", None, None)),
    Endpoint("DELETE", "/v1/gateways/{gateway_id}/claim", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/claim", None, None)),
    # The matrix's app has no broker password file: an authorised rotation gets that far and answers 503
    # (issued for real in tests/cloud/api/test_gateways_api.py).
    Endpoint("POST", "/v1/gateways/{gateway_id}/credentials/rotate", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/credentials/rotate", None, None), success=503,
             label=" (authorised: 503, no password file here)"),
    Endpoint("GET", "/v1/gateways/{gateway_id}/config", "gateway_read", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/config", None, None)),
    Endpoint("PUT", "/v1/gateways/{gateway_id}/config", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/config", None, {"config": {"status_interval_s": 30}})),
    Endpoint("GET", "/v1/gateways/{gateway_id}/candidates", "gateway_read", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/candidates", None, None)),
    Endpoint("POST", "/v1/gateways/{gateway_id}/devices/{uid:path}/confirm", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/devices/ble:{uuid.uuid4().hex[:12]}/confirm", None,
                        {"user_index": 1})),
    Endpoint("POST", "/v1/gateways/{gateway_id}/devices/{uid:path}/ignore", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/devices/ble:{uuid.uuid4().hex[:12]}/ignore", None, None)),
    Endpoint("POST", "/v1/gateways/{gateway_id}/devices/{uid:path}/unpair", "gateway_write", "readings",
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/devices/ble:{uuid.uuid4().hex[:12]}/unpair", None, None)),
    Endpoint("POST", "/v1/devices/{device_uid}/assignments", "assign", "readings",
             lambda c: c.assign_to_target(None), success=201),
    Endpoint("POST", "/v1/devices/{device_uid}/assignments", "assign", "readings",
             lambda c: c.assign_to_target("consented"), success=201, displaces="consented",
             label=" moving a consented patient's cuff"),
    Endpoint("POST", "/v1/devices/{device_uid}/assignments", "assign", "readings",
             lambda c: c.assign_to_target("other"), success=201, displaces="other",
             label=" moving another team's patient's cuff"),
    Endpoint("POST", "/v1/devices/{device_uid}/assignments", "assign", "readings",
             lambda c: c.assign_to_target("other", user_index=2), success=201, displaces="other",
             label=" taking one user of another team's patient's cuff"),
    Endpoint("DELETE", "/v1/devices/{device_uid}/assignments", "unassign", "readings",
             lambda c: (f"/v1/devices/{c.new_device(assign_to=c.patient)}/assignments", None, None)),
    # RPM programme (issue 25): episodes, clinician time, the patient's month report.
    Endpoint("GET", "/v1/patients/{patient_id}/programme-enrolments", "read", "readings", _p("/programme-enrolments")),
    Endpoint("POST", "/v1/patients/{patient_id}/programme-enrolments", "write", "readings",
             lambda c: (f"/v1/patients/{c.patient}/programme-enrolments", None, c.past_episode()), success=201),
    Endpoint("POST", "/v1/patients/{patient_id}/programme-enrolments/{enrolment_id}/end", "write", "readings",
             lambda c: (f"/v1/patients/{c.patient}/programme-enrolments/{c.open_episode()}/end", None,
                        {"ended_on": "2099-12-31"})),
    Endpoint("GET", "/v1/patients/{patient_id}/time-entries", "read", "readings", _p("/time-entries")),
    Endpoint("POST", "/v1/patients/{patient_id}/time-entries", "write", "readings",
             lambda c: (f"/v1/patients/{c.patient}/time-entries", None,
                        {"minutes": 5, "reason": "call", "interactive_communication": True}), success=201),
    Endpoint("GET", "/v1/patients/{patient_id}/reports/rpm", "read", "readings",
             _p("/reports/rpm", {"month": "2026-03"})),
]

ROLE_ENDPOINTS = [
    # The month-end report holds clinical data: the team's clinicians and care team members only.
    Endpoint("GET", "/v1/care-teams/{team_id}/reports/rpm", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/reports/rpm", {"month": "2026-03"}, None), roles=CLINICAL),
    Endpoint("GET", "/v1/patients", "role", None, lambda c: ("/v1/patients", None, None),
             roles=("patient", *CLINICAL)),
    Endpoint("GET", "/v1/alerts", "role", None, lambda c: ("/v1/alerts", None, None), roles=("patient", *CLINICAL)),
    Endpoint("GET", "/v1/inbox", "role", None, lambda c: ("/v1/inbox", None, None), roles=("patient", *CLINICAL)),
    # Server-sent events: the test client's streams end after TEST_CLIENT_STREAM_S (tests/cloud/api/conftest.py).
    Endpoint("GET", "/v1/stream", "role", None, lambda c: ("/v1/stream", None, None), roles=("patient", *CLINICAL)),
    Endpoint("GET", "/v1/devices", "role", None, lambda c: ("/v1/devices", None, None), roles=("admin",)),
    Endpoint("GET", "/v1/devices/unassigned", "role", None, lambda c: ("/v1/devices/unassigned", None, None),
             roles=("admin", *CLINICAL)),
    Endpoint("GET", "/v1/care-teams", "role", None, lambda c: ("/v1/care-teams", None, None),
             roles=("patient", "admin", *CLINICAL)),
    Endpoint("POST", "/v1/care-teams", "role", None,
             lambda c: ("/v1/care-teams", None, {"id": f"t-{uuid.uuid4().hex[:10]}", "name": "New team"}),
             success=201, roles=("admin",)),
    Endpoint("GET", "/v1/care-teams/{team_id}/members", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/members", None, None), roles=("admin",)),
    Endpoint("POST", "/v1/care-teams/{team_id}/members", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/members", None, {"subject": "dr-new"}), success=201,
             roles=("admin",)),
    Endpoint("PUT", "/v1/devices/{device_uid}/gateway", "role", None,
             lambda c: (f"/v1/devices/ble:{uuid.uuid4().hex[:12]}/gateway", None,
                        {"gateway_id": "gw-replacement", "reason": "gateway replaced"}), roles=("admin",)),
    Endpoint("GET", "/v1/audit", "role", None, lambda c: ("/v1/audit", None, None), roles=("admin",)),
    # The patient's own Consents and AuditEvents as FHIR searches (H18): the patient role only.
    Endpoint("GET", "/fhir/Consent", "role", None,
             lambda c: ("/fhir/Consent", {"patient": f"Patient/{c.patient}"}, None), roles=("patient",)),
    Endpoint("GET", "/fhir/AuditEvent", "role", None,
             lambda c: ("/fhir/AuditEvent", {"patient": f"Patient/{c.patient}"}, None), roles=("patient",)),
    # FHIR Bulk Data export (cloud/api/routes/fhir_bulk.py): kick-offs by role; jobs and files their owner's only.
    Endpoint("GET", "/fhir/Group/{group_id}/$export", "role", None,
             lambda c: (f"/fhir/Group/{c.world.team}/$export", None, None), success=202, roles=CLINICAL,
             headers={"Prefer": "respond-async"}),
    Endpoint("GET", "/fhir/Patient/$export", "role", None, lambda c: ("/fhir/Patient/$export", None, None),
             success=202, roles=("patient", *CLINICAL), headers={"Prefer": "respond-async"}),
    Endpoint("GET", "/fhir/$export-status/{job_id}", "owner", None,
             lambda c: (f"/fhir/$export-status/{c.clinician_export()}", None, None), roles=("patient", *CLINICAL),
             owner="clinician"),
    Endpoint("DELETE", "/fhir/$export-status/{job_id}", "owner", None,
             lambda c: (f"/fhir/$export-status/{c.clinician_export()}", None, None), success=202,
             roles=("patient", *CLINICAL), owner="clinician"),
    Endpoint("GET", "/fhir/$export-file/{job_id}/{name}", "owner", None,
             lambda c: (f"/fhir/$export-file/{c.clinician_export()}/Patient.ndjson", None, None),
             roles=("patient", *CLINICAL), owner="clinician"),
    # The fleet view (issue 19): care teams see their patients' gateways, administrators all; a pinned key is
    # released by an administrator only.
    Endpoint("GET", "/v1/gateways", "role", None, lambda c: ("/v1/gateways", None, None), roles=("admin", *CLINICAL)),
    Endpoint("DELETE", "/v1/gateways/{gateway_id}/identity", "role", None,
             lambda c: (f"/v1/gateways/{c.claimed_gateway()}/identity", None, None), roles=("admin",)),
    # Who the token says I am: every role the API serves (issue 20).
    Endpoint("GET", "/v1/me", "role", None, lambda c: ("/v1/me", None, None), roles=("patient", "admin", *CLINICAL)),
    # An invite code to the caller's own care team: its clinicians and members (issue 20).
    Endpoint("POST", "/v1/care-teams/{team_id}/invites", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/invites", None, {"expires_in_days": 3}), success=201,
             roles=CLINICAL),
    # Escalation set-up: the team's members (token names the team) and administrators.
    Endpoint("GET", "/v1/care-teams/{team_id}/escalation", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/escalation", None, None), roles=("admin", *CLINICAL)),
    Endpoint("PUT", "/v1/care-teams/{team_id}/escalation/contacts", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/escalation/contacts", None, {"contacts": []}),
             roles=("admin", *CLINICAL)),
    Endpoint("PUT", "/v1/care-teams/{team_id}/escalation/on-call", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/escalation/on-call", None, {"schedules": []}),
             roles=("admin", *CLINICAL)),
    Endpoint("PUT", "/v1/care-teams/{team_id}/escalation/policies", "role", None,
             lambda c: (f"/v1/care-teams/{c.world.team}/escalation/policies", None, {"policies": []}),
             roles=("admin", *CLINICAL)),
]
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
               # The page shell and its files hold no patient data (cloud/api/routes/ui.py); the API's own docs.
               ("GET", "/"), ("GET", "/ui"), ("GET", "/ui/"), ("GET", "/ui/me"), ("GET", "/ui/metrics.json"),
               ("GET", "/ui/static/{name}"),
               # The page's sign-in settings: issuer, client id, scopes (public by nature, no secret).
               ("GET", "/ui/config.json"),
               ("GET", "/ui/report"),  # the printable programme report's shell (issue 25); data via /v1
               ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"),
               ("GET", "/docs/assets/swagger-init.js"), ("GET", "/docs/assets/{name}"),
               # Like any FHIR server's CapabilityStatement: it describes the server, no patient's data.
               ("GET", "/fhir/metadata")}
# Open writes: the credential is the secret in the path (a first-time link's single-use token), so there is no
# bearer token to authorise; the route audits itself, and test_patient_access.py tries it unknown, used and
# expired.
OPEN_WRITES = {("POST", "/v1/first-time-links/{token}/redeem")}
# The gateway's bootstrap poll is authenticated by its Ed25519 signature, not a bearer token; it audits what
# it changes itself (tests/cloud/api/test_gateways_api.py tries bad signatures, replays, other keys).
OPEN_WRITES |= {("POST", "/bootstrap/v1/poll")}
OPEN_ROUTES |= OPEN_WRITES
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def visible(role: str, target: str, scope: str | None) -> bool:
    if role == "patient":
        return target == "own"
    if role in CLINICAL:
        return scope in SCOPES_OF_TARGET.get(target, set())
    return False


def expected_status(endpoint: Endpoint, role: str, target: str) -> int:
    if role == "gateway":
        return 403
    if endpoint.kind.startswith("gateway_"):
        # A gateway is seen through its claimed patient, as a read or write of that patient, and administrators
        # configure every gateway.
        if role == "admin":
            return endpoint.success
        endpoint = dataclasses.replace(endpoint, kind=endpoint.kind.removeprefix("gateway_"))
    if endpoint.kind == "role":
        return endpoint.success if role in endpoint.roles else 403
    if endpoint.kind == "owner":
        if role not in endpoint.roles:
            return 403
        return endpoint.success if role == endpoint.owner else 404  # someone else's job answers like none
    if endpoint.kind == "own":
        return endpoint.success if role == "patient" and target == "own" else 404
    if endpoint.kind == "fhir_search":
        return 200  # a hidden patient is an empty Bundle, like one that does not exist
    if endpoint.kind in ("assign", "unassign"):
        if role == "admin":
            return endpoint.success  # configuration: any device, any patient, audited
        if not visible(role, target, endpoint.scope):
            return 404
        if role == "patient":
            return 403  # sees their own record, does not assign devices
        if endpoint.displaces and not visible(role, endpoint.displaces, endpoint.scope):
            return 403  # a move across care teams is an administrator's
        return endpoint.success
    if not visible(role, target, endpoint.scope):
        return 404
    if endpoint.kind == "write" and role not in CLINICAL:
        return 403
    return endpoint.success


CASES = [(e, role, target) for e in PATIENT_ENDPOINTS for role, target in itertools.product(ROLES, TARGETS)]
CASES += [(e, role, "own") for e in ROLE_ENDPOINTS for role in ROLES]


@pytest.fixture(scope="module")
def matrix_world(database_url: str, auth: Any) -> Iterator[tuple[World, psycopg.Connection]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield build_world(conn, f"m{uuid.uuid4().hex[:10]}", auth), conn


@pytest.mark.parametrize(("endpoint", "role", "target"), CASES,
                         ids=[f"{e.name}|{r}|{t}" for e, r, t in CASES])
def test_status_follows_policy(client: TestClient, matrix_world: tuple[World, psycopg.Connection],
                               endpoint: Endpoint, role: str, target: str) -> None:
    world, conn = matrix_world
    path, params, body = endpoint.build(Context(world, conn, target))
    response = client.request(endpoint.method, path, params=params, json=body,
                              headers={**world.headers[role], **endpoint.headers})
    want = expected_status(endpoint, role, target)
    assert response.status_code == want, f"{endpoint.name} as {role} on {target}: {response.text[:300]}"
    if want >= 400:
        error_type = "application/fhir+json" if path.startswith("/fhir/") else "application/problem+json"
        assert response.headers["content-type"].startswith(error_type)
    if endpoint.kind == "fhir_search" and want == 200:
        entries = response.json()["entry"]
        assert bool(entries) == visible(role, target, endpoint.scope)
    if endpoint.method in WRITE_METHODS:
        assert_write_audited(conn, endpoint, role, target, world, response)


def assert_write_audited(conn: psycopg.Connection, endpoint: Endpoint, role: str, target: str, world: World,
                         response: Any) -> None:
    """Every write by a signed-in caller, allowed or refused, has its audit row naming what it touched."""
    row = conn.execute("SELECT action, patient_ids, status FROM audit_log WHERE request_id = %s",
                       (response.headers["x-request-id"],)).fetchone()
    assert row is not None, f"{endpoint.name} as {role} on {target} ({response.status_code}) left no audit row"
    action, patient_ids, status = row
    assert (action, status) == (f"{endpoint.method} {endpoint.route}", response.status_code)
    if role == "gateway" or endpoint.kind in ("role", "owner"):
        return  # refused before any patient is looked at, or not about a patient
    assert world.patients[target] in patient_ids
    if endpoint.displaces and endpoint.displaces != target:
        assert world.patients[endpoint.displaces] in patient_ids, "a move is audited with both patients"


def _walk(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.16x keeps included routers whole
        if included is not None:
            yield from _walk(included.routes)
        else:
            yield route


def _app_routes(client: TestClient) -> set[tuple[str, str]]:
    """Every (method, path) the application serves, from its routing table (not the OpenAPI document,
    which leaves out routes hidden from the schema)."""
    routes = set()
    for route in _walk(client.app.routes):  # type: ignore[attr-defined]
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                routes.add((method, route.path))
    return routes


def test_every_route_is_in_the_matrix(client: TestClient) -> None:
    routes = _app_routes(client)
    spec = client.app.openapi()  # type: ignore[attr-defined]
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    # OpenAPI writes a path parameter that may hold slashes ({uid:path}, a USB device's port) as {uid}.
    assert documented <= {(m, p.replace(":path}", "}")) for m, p in routes}, \
        "the routing table walk misses routes the OpenAPI document has"
    covered = {(e.method, e.route) for e in PATIENT_ENDPOINTS + ROLE_ENDPOINTS} | OPEN_ROUTES
    assert routes - covered == set(), "routes with no entry in the authorisation matrix"
    assert covered - routes == set(), "matrix entries for routes the app does not have"


def test_every_write_route_is_checked_for_every_role(client: TestClient) -> None:
    writes = {(m, p) for m, p in _app_routes(client) if m in WRITE_METHODS}
    assert writes, "the app has write routes"
    assert not (writes & OPEN_ROUTES) - OPEN_WRITES, "no write route is open but those listed in OPEN_WRITES"
    for method, path in writes - OPEN_WRITES:
        roles = {role for e, role, _ in CASES if (e.method, e.route) == (method, path)}
        assert roles == set(ROLES), f"{method} {path} is not tried as every role"


def test_hidden_patient_answers_like_a_missing_one(client: TestClient,
                                                   matrix_world: tuple[World, psycopg.Connection]) -> None:
    world, _ = matrix_world
    headers = world.headers["clinician"]
    hidden = client.get(f"/v1/patients/{world.patients['other']}/readings", headers=headers)
    missing = client.get("/v1/patients/no-such-patient-at-all/readings", headers=headers)
    assert hidden.status_code == missing.status_code == 404
    strip = ("instance", "request_id")
    assert {k: v for k, v in hidden.json().items() if k not in strip} == \
        {k: v for k, v in missing.json().items() if k not in strip}
