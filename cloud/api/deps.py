"""Dependencies injected as ``Annotated`` types: a database connection from the pool, the caller
(verified bearer token), and authorisation to one patient's data for one scope.

Authorisation is a dependency, not an ``if`` in every handler:

- ``patient`` sees only their own record; ``clinician`` and ``care_team`` see a patient while an
  active consent (not revoked, not expired) of the patient grants one of their care teams the scope
  asked (readings, alerts, twin), checked on every request so a revocation applies to the next one;
  ``admin`` configures (care teams, devices, the audit log) and sees no clinical data; ``gateway``
  tokens get nothing from the HTTP API.
- A patient the caller may not see answers 404 exactly like one that does not exist.
- Every patient whose data a request touches is noted in ``request.state.audit_patients``; the audit
  middleware writes one audit row naming them with the request's outcome. Every write (POST, PUT,
  PATCH, DELETE) by a signed-in caller is audited even when it names no patient (care-team
  configuration) or is refused; ``request.state.audit_detail`` says what it changed.
- Writes are authorised like reads: the same consent scope as the data they change, then the role
  (403 where the caller sees the patient but may not change it). Device assignment is
  :func:`authorise_device_change`: moving a device away from a patient needs access to that patient
  too, and a move across care teams is an administrator's (configuration, audited with every
  patient it touches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api import queries
from cloud.api.problems import ApiProblem, forbidden, not_found
from cloud.api.tokens import Principal
from cloud.devices.assignment import AssignmentChange

CLINICAL_ROLES = ("clinician", "care_team")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_bearer = HTTPBearer(auto_error=False, description="OAuth2 bearer token (JWT)")


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    with request.app.state.pool.connection() as conn:
        yield conn


# Returned to the pool when the handler returns, not after the response is sent: the audit write in the
# middleware needs a connection of its own, and holding one per in-flight response starved the pool.
DbConn = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


def get_principal(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiProblem(401, "a bearer token is required", slug="unauthenticated",
                         headers={"WWW-Authenticate": "Bearer"})
    principal = request.app.state.verifier.verify(credentials.credentials)
    request.state.principal = principal
    if principal.role == "gateway":
        raise forbidden("gateway tokens have no access to the HTTP API")
    # A first-time link is a bearer credential whoever made it could also use: its token may look at the
    # record, never change who sees it (consents, closure, anything written).
    if principal.claims.get("first_time") is True and request.method in WRITE_METHODS:
        raise forbidden("a first-time sign-in link lets you look at your record; to change who sees it or"
                        " anything else, sign in with your own account")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: str) -> Callable[[Principal], Principal]:
    def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise forbidden(f"this needs one of the roles: {', '.join(roles)}")
        return principal
    return dependency


ClinicalPrincipal = Annotated[Principal, Depends(require_roles(*CLINICAL_ROLES))]
PanelPrincipal = Annotated[Principal, Depends(require_roles("patient", *CLINICAL_ROLES))]
AdminPrincipal = Annotated[Principal, Depends(require_roles("admin"))]


@dataclass(frozen=True, slots=True)
class PatientAccess:
    patient_id: str
    principal: Principal
    scopes: frozenset[str]
    """What the caller may see of this patient (all three for the patient themself)."""

    @property
    def is_own_record(self) -> bool:
        return self.principal.role == "patient"

    def require_clinical(self) -> None:
        """Changes (acknowledging, setting thresholds, assigning) are for the care team, not the patient."""
        if self.principal.role not in CLINICAL_ROLES:
            raise forbidden("only a clinician or care team member may change this")


def note_audit(request: Request, patient_id: str | None) -> None:
    if patient_id is None:
        return
    noted = getattr(request.state, "audit_patients", None)
    if noted is None:
        noted = request.state.audit_patients = []
    if patient_id not in noted:
        noted.append(patient_id)


def note_audit_detail(request: Request, detail: dict[str, object]) -> None:
    """What a write changed, for its audit row (the administrators' log shows it)."""
    request.state.audit_detail = detail


def visible_scopes(conn: psycopg.Connection, principal: Principal, patient_id: str) -> frozenset[str]:
    """What the caller may see of ``patient_id``: empty when nothing (or the patient does not exist)."""
    if principal.role == "patient":
        if principal.patient_id == patient_id and queries.patient_exists(conn, patient_id):
            return frozenset(queries.SCOPES)
    elif principal.role in CLINICAL_ROLES and principal.care_teams:
        return frozenset(queries.consented_scopes(conn, patient_id, principal.care_teams))
    return frozenset()


def authorise_patient(conn: psycopg.Connection, request: Request, principal: Principal, patient_id: str,
                      scope: str) -> PatientAccess:
    """The caller's access to ``patient_id`` for ``scope``, or a 404 problem (audited either way)."""
    note_audit(request, patient_id)
    scopes = visible_scopes(conn, principal, patient_id)
    if scope in scopes:
        return PatientAccess(patient_id, principal, scopes)
    raise not_found("patient")


CROSS_TEAM = ("the device is assigned to a patient your care teams have no consent for; moving it between care"
              " teams is an administrator's change")


def authorise_device_change(conn: psycopg.Connection, request: Request, principal: Principal,
                            change: AssignmentChange) -> None:
    """Whether the caller may make ``change`` (called by ``cloud.db.assign`` under the device's lock).

    - Every patient the change touches is audited, and the change itself (device, user index, the new
      patient, the displaced ones) is the row's detail, whatever the outcome.
    - ``admin``: may assign any device to any existing patient and move it away from anyone: a
      configuration act that shows no clinical data (the answer holds counts, never readings).
    - ``clinician`` / ``care_team``: the new patient needs the ``readings`` scope for one of their teams
      (else 404, as for a missing patient), and so does every displaced patient (a device of a
      patient they cannot see: 403, an administrator's move). Unassigning needs the scope for the
      patients whose assignments close (none visible: 404, as for a missing assignment).
    - ``patient``: sees their own record but does not assign (403); any other patient is 404.
    Readings waiting in the unassigned queue belong to nobody yet: claiming them is the care team's
    triage and needs only the new patient's consent.
    """
    for patient_id in change.patients:
        note_audit(request, patient_id)
    note_audit_detail(request, change.audit_detail())
    if principal.role == "admin":
        if change.patient_id is not None and not queries.patient_exists(conn, change.patient_id):
            raise not_found("patient")
        if change.patient_id is None and not change.displaced:
            raise not_found("assignment")
        return
    if change.patient_id is not None:
        authorise_patient(conn, request, principal, change.patient_id, "readings").require_clinical()
        if any("readings" not in visible_scopes(conn, principal, q) for q in change.displaced):
            raise forbidden(CROSS_TEAM)
        return
    seen = [q for q in change.displaced if "readings" in visible_scopes(conn, principal, q)]
    if not seen:
        raise not_found("assignment")
    if principal.role not in CLINICAL_ROLES:
        raise forbidden("only a clinician, a care team member or an administrator may unassign a device")
    if len(seen) < len(change.displaced):
        raise forbidden(CROSS_TEAM)


def patient_scope(scope: str) -> Callable[..., PatientAccess]:
    def dependency(patient_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> PatientAccess:
        return authorise_patient(conn, request, principal, patient_id, scope)
    dependency.__name__ = f"patient_{scope}_access"
    return dependency


def own_record(patient_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> PatientAccess:
    """Consents and the access trail are the patient's alone."""
    note_audit(request, patient_id)
    if principal.role == "patient" and principal.patient_id == patient_id and queries.patient_exists(conn, patient_id):
        return PatientAccess(patient_id, principal, frozenset(queries.SCOPES))
    raise not_found("patient")


ReadingsAccess = Annotated[PatientAccess, Depends(patient_scope("readings"))]
AlertsAccess = Annotated[PatientAccess, Depends(patient_scope("alerts"))]
TwinAccess = Annotated[PatientAccess, Depends(patient_scope("twin"))]
OwnRecord = Annotated[PatientAccess, Depends(own_record)]
