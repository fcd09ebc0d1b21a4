"""A gateway's identity, claim and credentials: what ``POST /bootstrap/v1/poll`` answers and what the claim,
release and rotation routes change.

The poll (checked first by :func:`cloud.fleet.signed_poll.verify_poll`), in one transaction under a
per-gateway advisory lock so two polls of one gateway never race:

1. The key: the first poll for a gateway id pins its public key (audited). A later poll with another key
   is 409 until an administrator releases the identity (:func:`release_identity`).
2. The nonce: stored until a replay could no longer pass the clock check; seen before → 401.
3. Not claimed → 202 ``unclaimed`` with ``retry_after_s``.
4. Claimed → 200 ``provisioned``: the broker URL, the current credential while it is not yet delivered
   (a password, or a certificate signed for the poll's CSR), the newest config document. A credential is
   *delivered* once the gateway's status reaches the cloud after an answer carried it (the trigger of
   migration 0600); from then on the answer has ``mqtt: null`` and the plain password is gone. A
   delivered gateway polls again only when the broker refused its login: its password line is then
   written to the broker's file again if it is missing (a broker whose file was lost heals itself).
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cloud.fleet import FleetError
from cloud.fleet.broker_passwords import mosquitto_hash, new_password, reload_broker, update_password_file
from cloud.fleet.certificates import sign_gateway_csr
from cloud.fleet.signed_poll import PollBody, PollRefused
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)
POLL_ACTION = "POST /bootstrap/v1/poll"
NONCE_KEPT = timedelta(minutes=1)
"""Beyond the clock skew: a nonce is kept until ``now + skew + this``, past any replay that could still pass."""
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('rpm.gateway:' || %s))"


def lock_gateway(conn: psycopg.Connection, gateway_id: str) -> None:
    conn.execute(_LOCK, (gateway_id,))


def audit(conn: psycopg.Connection, *, subject: str, role: str, action: str, patients: list[str],
          detail: dict[str, Any], request_id: str | None, status: int | None = None) -> None:
    """An audit row for a change no bearer-token request makes (the gateway's own poll)."""
    conn.execute("INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status,"
                 " request_id, detail) VALUES (%s, %s, '{}', %s, %s, 'allowed', %s, %s, %s)",
                 (subject, role, action, patients, status, request_id or f"fleet-{uuid.uuid4().hex}", Jsonb(detail)))


@dataclass(frozen=True, slots=True)
class Claim:
    gateway_id: str
    patient_id: str
    care_team_id: str | None
    claimed_at: datetime
    claimed_by: str


def current_claim(conn: psycopg.Connection, gateway_id: str) -> Claim | None:
    row = conn.execute("SELECT gateway_id, patient_id, care_team_id, claimed_at, claimed_by FROM gateway_claims"
                       " WHERE gateway_id = %s AND released_at IS NULL", (gateway_id,)).fetchone()
    return Claim(*row) if row else None


def handle_poll(conn: psycopg.Connection, settings: CloudSettings, poll: PollBody, *,
                request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) for a verified poll; :class:`PollRefused` / :class:`FleetError` otherwise."""
    public = poll.public_key_raw
    with conn.transaction():
        lock_gateway(conn, poll.gateway_id)
        row = conn.execute("SELECT id, public_key FROM gateway_identities WHERE gateway_id = %s"
                           " AND released_at IS NULL", (poll.gateway_id,)).fetchone()
        if row is None:
            identity_id = conn.execute(
                "INSERT INTO gateway_identities (gateway_id, public_key, claim_code_sha256, software_version,"
                " polled_config_version) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (poll.gateway_id, public, poll.claim_code_sha256, poll.software_version,
                 poll.config_version)).fetchone()[0]  # type: ignore[index]
            audit(conn, subject=poll.gateway_id, role="gateway", action=POLL_ACTION, patients=[],
                  detail={"event": "identity pinned", "gateway_id": poll.gateway_id, "identity_id": identity_id,
                          "public_key": poll.public_key}, request_id=request_id)
        elif bytes(row[1]) != public:
            raise PollRefused(409, f"gateway {poll.gateway_id} is registered with another key; an administrator "
                              "can release it (DELETE /v1/gateways/{id}/identity)", slug="other-key")
        else:
            identity_id = row[0]
        if random.random() < 0.01:
            conn.execute("DELETE FROM gateway_poll_nonces WHERE expires_at < now()")
        else:
            conn.execute("DELETE FROM gateway_poll_nonces WHERE gateway_id = %s AND expires_at < now()",
                         (poll.gateway_id,))
        kept_until = max(poll.at, datetime.now(poll.at.tzinfo)) + timedelta(seconds=settings.bootstrap_clock_skew_s) \
            + NONCE_KEPT
        fresh = conn.execute("INSERT INTO gateway_poll_nonces (gateway_id, nonce, expires_at) VALUES (%s, %s, %s)"
                             " ON CONFLICT DO NOTHING RETURNING 1",
                             (poll.gateway_id, poll.nonce, kept_until)).fetchone()
        if fresh is None:
            raise PollRefused(401, "this nonce was used before (a replayed request)", slug="replay")
        conn.execute("UPDATE gateway_identities SET last_poll_at = now(), software_version = %s,"
                     " polled_config_version = %s WHERE id = %s",
                     (poll.software_version, poll.config_version, identity_id))
        claim = current_claim(conn, poll.gateway_id)
        if claim is None:
            return 202, {"state": "unclaimed", "retry_after_s": settings.bootstrap_retry_after_s}
        if not settings.gateway_broker_url:
            log.error("gateway %s is claimed but RPM_GATEWAY_BROKER_URL is not set: it cannot be provisioned",
                      poll.gateway_id)
            raise FleetError(503, "the cloud has no broker address for gateways yet (RPM_GATEWAY_BROKER_URL); "
                             "the gateway keeps asking", slug="broker-not-configured")
        mqtt = _credentials_for_poll(conn, settings, poll, claim, request_id)
        config = conn.execute("SELECT version, document FROM gateway_configs WHERE gateway_id = %s"
                              " ORDER BY version DESC LIMIT 1", (poll.gateway_id,)).fetchone()
    return 200, {"state": "provisioned", "gateway_id": poll.gateway_id, "patient_id": claim.patient_id,
                 "mqtt": mqtt, "config": config[1] if config else None, "config_version": config[0] if config else None}


_CURRENT = ("SELECT id, kind, username, password_hash, pending_password, cert_pem, delivered_at, first_sent_at,"
            " rotate_requested_at FROM gateway_credentials WHERE gateway_id = %s AND revoked_at IS NULL"
            " ORDER BY id DESC LIMIT 1")


def _credentials_for_poll(conn: psycopg.Connection, settings: CloudSettings, poll: PollBody, claim: Claim,
                          request_id: str | None) -> dict[str, Any] | None:
    row = conn.execute(_CURRENT, (poll.gateway_id,)).fetchone()
    wanted = settings.gateway_credentials
    if row is None or row[1] != wanted or (row[1] == "certificate" and row[8] is not None):
        issue_credential(conn, settings, poll.gateway_id, actor=poll.gateway_id, csr_pem=poll.csr)
        row = conn.execute(_CURRENT, (poll.gateway_id,)).fetchone()
        assert row is not None
    credential_id, kind, username, password_hash, pending, cert_pem, delivered_at, first_sent_at, _ = row
    if delivered_at is not None:
        if kind == "password" and settings.broker_password_file is not None:
            _heal_password_line(settings, username, password_hash)
        return None
    if first_sent_at is None:
        conn.execute("UPDATE gateway_credentials SET first_sent_at = now() WHERE id = %s", (credential_id,))
        audit(conn, subject=poll.gateway_id, role="gateway", action=POLL_ACTION, patients=[claim.patient_id],
              detail={"event": "credentials sent", "gateway_id": poll.gateway_id, "credential_id": credential_id,
                      "kind": kind}, request_id=request_id, status=200)
    answer: dict[str, Any] = {"url": settings.gateway_broker_url}
    if settings.gateway_broker_ca_file is not None:
        answer["ca_pem"] = settings.gateway_broker_ca_file.read_text()
    if kind == "password":
        answer |= {"username": username, "password": pending}
    else:
        answer |= {"client_cert_pem": cert_pem}
    return answer


def _heal_password_line(settings: CloudSettings, username: str, password_hash: str) -> None:
    path = settings.broker_password_file
    assert path is not None
    present = path.exists() and f"{username}:{password_hash}" in path.read_text().splitlines()
    if not present:
        log.warning("the broker's password file had no (or another) line for gateway %s: written again", username)
        update_password_file(path, username, password_hash)
        reload_broker(settings.broker_reload_command, settings.broker_pid_file)


def issue_credential(conn: psycopg.Connection, settings: CloudSettings, gateway_id: str, *, actor: str,
                     csr_pem: str | None = None) -> int:
    """A new credential of the configured kind (inside the caller's transaction, gateway locked). Earlier
    credentials not yet delivered are revoked at once (nobody has them); delivered ones stay valid in the
    database until the trigger sees the gateway use the new one. A password replaces the gateway's line in
    the broker's file now (mosquitto has one password per user and drops sessions that no longer check on
    reload): the gateway is disconnected, refused, polls, and gets the new one."""
    conn.execute("UPDATE gateway_credentials SET revoked_at = now(), revoked_by = %s, pending_password = NULL"
                 " WHERE gateway_id = %s AND revoked_at IS NULL AND delivered_at IS NULL",
                 (f"superseded before delivery ({actor})", gateway_id))
    if settings.gateway_credentials == "password":
        if settings.broker_password_file is None:
            raise FleetError(503, "password credentials need RPM_BROKER_PASSWORD_FILE (the gateways' listener's "
                             "password file)", slug="broker-not-configured")
        password = new_password()
        hashed = mosquitto_hash(password)
        row = conn.execute("INSERT INTO gateway_credentials (gateway_id, kind, username, password_hash,"
                           " pending_password, issued_by) VALUES (%s, 'password', %s, %s, %s, %s) RETURNING id",
                           (gateway_id, gateway_id, hashed, password, actor)).fetchone()
        update_password_file(settings.broker_password_file, gateway_id, hashed)
        reload_broker(settings.broker_reload_command, settings.broker_pid_file)
    else:
        issued = sign_gateway_csr(csr_pem, gateway_id, ca_cert=settings.gateway_ca_cert,
                                  ca_key=settings.gateway_ca_key, days=settings.gateway_cert_days)
        row = conn.execute("INSERT INTO gateway_credentials (gateway_id, kind, username, cert_serial,"
                           " cert_fingerprint, cert_pem, not_after, issued_by) VALUES"
                           " (%s, 'certificate', %s, %s, %s, %s, %s, %s) RETURNING id",
                           (gateway_id, gateway_id, issued.serial, issued.fingerprint, issued.pem, issued.not_after,
                            actor)).fetchone()
    assert row is not None
    return int(row[0])


def request_rotation(conn: psycopg.Connection, settings: CloudSettings, gateway_id: str, actor: str) -> dict[str, Any]:
    """New credentials for a claimed gateway: a password now (see :func:`issue_credential`), a certificate
    at the gateway's next poll (the CSR comes with it)."""
    with conn.transaction():
        lock_gateway(conn, gateway_id)
        if current_claim(conn, gateway_id) is None:
            raise FleetError(409, "the gateway is not claimed: it has no credentials to rotate", slug="not-claimed")
        if settings.gateway_credentials == "password":
            credential_id = issue_credential(conn, settings, gateway_id, actor=actor)
            return {"gateway_id": gateway_id, "kind": "password", "credential_id": credential_id,
                    "issued": True, "delivered_on": "the gateway's next poll (the broker now refuses the old password)"}
        row = conn.execute("UPDATE gateway_credentials SET rotate_requested_at = now(), rotate_requested_by = %s"
                           " WHERE id = (SELECT id FROM gateway_credentials WHERE gateway_id = %s"
                           " AND revoked_at IS NULL ORDER BY id DESC LIMIT 1) RETURNING id",
                           (actor, gateway_id)).fetchone()
        return {"gateway_id": gateway_id, "kind": "certificate", "credential_id": row[0] if row else None,
                "issued": False, "delivered_on": "the gateway's next poll (signed for its CSR)"}


def revoke_all(conn: psycopg.Connection, settings: CloudSettings, gateway_id: str, reason: str) -> int:
    """Revoke every credential of the gateway and remove its broker login (release of claim or identity)."""
    revoked = conn.execute("UPDATE gateway_credentials SET revoked_at = now(), revoked_by = %s, pending_password = NULL"
                           " WHERE gateway_id = %s AND revoked_at IS NULL", (reason, gateway_id)).rowcount
    if revoked and settings.broker_password_file is not None and settings.broker_password_file.exists():
        update_password_file(settings.broker_password_file, gateway_id, None)
        reload_broker(settings.broker_reload_command, settings.broker_pid_file)
    return revoked


def release_claim(conn: psycopg.Connection, settings: CloudSettings, gateway_id: str, actor: str) -> Claim:
    """End the gateway's claim (kept as history) and its broker login: it polls, unclaimed, until claimed again."""
    with conn.transaction():
        lock_gateway(conn, gateway_id)
        claim = current_claim(conn, gateway_id)
        if claim is None:
            raise FleetError(404, "no such claim", slug="not-found")
        conn.execute("UPDATE gateway_claims SET released_at = now(), released_by = %s WHERE gateway_id = %s"
                     " AND released_at IS NULL", (actor, gateway_id))
        revoke_all(conn, settings, gateway_id, f"claim released by {actor}")
    return claim


def release_identity(conn: psycopg.Connection, settings: CloudSettings, gateway_id: str, actor: str) -> dict[str, Any]:
    """Forget the pinned key (history kept): the next poll for this id pins its key again. Its claim and
    credentials end too, or whoever polled first with a new key would inherit the patient."""
    with conn.transaction():
        lock_gateway(conn, gateway_id)
        row = conn.execute("UPDATE gateway_identities SET released_at = now(), released_by = %s WHERE gateway_id = %s"
                           " AND released_at IS NULL RETURNING id", (actor, gateway_id)).fetchone()
        if row is None:
            raise FleetError(404, "no such gateway identity", slug="not-found")
        claim = current_claim(conn, gateway_id)
        conn.execute("UPDATE gateway_claims SET released_at = now(), released_by = %s WHERE gateway_id = %s"
                     " AND released_at IS NULL", (actor, gateway_id))
        revoked = revoke_all(conn, settings, gateway_id, f"identity released by {actor}")
    return {"gateway_id": gateway_id, "identity_id": row[0], "claim_released": claim is not None,
            "patient_id": claim.patient_id if claim else None, "credentials_revoked": revoked}


def record_claim_failure(conn: psycopg.Connection, subject: str) -> None:
    conn.execute("INSERT INTO gateway_claim_failures (subject) VALUES (%s)", (subject,))


def claim_failures(conn: psycopg.Connection, subject: str, window_s: float) -> int:
    conn.execute("DELETE FROM gateway_claim_failures WHERE at < now() - interval '1 day'")
    row = conn.execute("SELECT count(*) FROM gateway_claim_failures WHERE subject = %s"
                       " AND at > now() - make_interval(secs => %s)", (subject, window_s)).fetchone()
    return int(row[0]) if row else 0


def claim_gateway(conn: psycopg.Connection, code_sha256: str, patient_id: str, care_team_id: str | None,
                  actor: str) -> str | None:
    """Claim the unclaimed gateway that polled with this code for the patient; its id, or None when no
    gateway (or more than one: someone copied a code) waits with it."""
    with conn.transaction():
        rows = conn.execute("SELECT i.id, i.gateway_id FROM gateway_identities i WHERE i.claim_code_sha256 = %s"
                            " AND i.released_at IS NULL", (code_sha256,)).fetchall()
        if len(rows) != 1:
            if len(rows) > 1:
                log.warning("claim code shared by %d gateways (%s): refused", len(rows), [r[1] for r in rows])
            return None
        identity_id, gateway_id = rows[0]
        lock_gateway(conn, gateway_id)
        existing = current_claim(conn, gateway_id)
        if existing is not None:
            if existing.patient_id == patient_id:
                return gateway_id
            raise FleetError(409, "this gateway is claimed for another patient; release that claim first",
                             slug="already-claimed")
        conn.execute("INSERT INTO gateway_claims (gateway_id, identity_id, patient_id, care_team_id, claimed_by)"
                     " VALUES (%s, %s, %s, %s, %s)", (gateway_id, identity_id, patient_id, care_team_id, actor))
    return str(gateway_id)
