"""The EHR push against an independent FHIR server (tests/ehr_server: @medplum/fhir-router behind a SMART
Backend Services token endpoint): readings stored by the real ingest writer reach the EHR as PHD transaction
Bundles, exactly once whatever fails in between, and only while the patient's consent allows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fhir.resources.R4B import get_fhir_model_class

from cloud.ehr_push import queries
from cloud.ehr_push.bundle import reading_group
from cloud.ehr_push.config import load_push_config
from cloud.ehr_push.worker import EhrPusher, push_until_idle
from cloud.ingest import queries as ingest_queries
from cloud.settings import CloudSettings
from cloud.twin import fhir
from tests.cloud.ehr_push.conftest import TEAM, Ward, push_settings
from tests.ehr_server.server import EhrServer
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def expected_observations(conn: psycopg.Connection, patient_ids: list[str]) -> int:
    rows = queries.reading_rows(
        conn,
        [r[0] for r in conn.execute("SELECT id FROM readings WHERE patient_id = ANY(%s)", (patient_ids,)).fetchall()],
    )
    return sum(len(reading_group(row).observations) for row in rows)


def outbox(conn: psycopg.Connection) -> dict[str, int]:
    return queries.outbox_counts(conn)


def pusher(settings: CloudSettings, **kw: Any) -> EhrPusher:
    return EhrPusher(settings, load_push_config(settings), **kw)


def test_readings_reach_the_ehr_once_as_valid_linked_phd_resources(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings, medplum_validate: Any
) -> None:
    ward.add("ann")
    ward.add("bob")
    ward.store(ward.blood_pressure("ann", 3, flags=["irregular_pulse"]) + ward.glucose("ann", 2))
    ward.store(ward.glucose("bob", 3), gateway_id="gw-home-2")

    report = push_until_idle(settings)

    assert report.readings_sent == 8 and report.batches_parked == 0 and report.withheld == 0
    assert outbox(db) == {"sent": 8}
    counts = ehr.stats()["resources"]
    observations = expected_observations(db, ["ann", "bob"])
    assert counts == {"Patient": 2, "Device": 5, "Observation": observations}  # 3 meters and cuffs, 2 gateways
    patients = {p["identifier"][0]["value"]: p["id"] for p in ehr.search("Patient")}
    devices = {d["identifier"][0]["value"]: d["id"] for d in ehr.search("Device")}
    assert set(patients) == {"ann", "bob"}
    assert set(devices) == {"ble:ann:blood_pressure", "ble:ann:glucose", "ble:bob:glucose", "gw-home-1", "gw-home-2"}
    stored = ehr.search("Observation")
    by_id = {o["id"]: o for o in stored}
    for observation in stored:
        # Every reference resolves to what the server assigned: no urn:uuid, no id of ours, left behind.
        subject = observation["subject"]["reference"]
        assert subject in {f"Patient/{i}" for i in patients.values()} | {f"Device/{i}" for i in devices.values()}
        assert observation["device"]["reference"].removeprefix("Device/") in devices.values()
        gateway = next(e for e in observation["extension"] if e["url"] == fhir.GATEWAY_EXTENSION)
        assert gateway["valueReference"]["reference"].removeprefix("Device/") in (
            devices["gw-home-1"],
            devices["gw-home-2"],
        )
        for derived in observation.get("derivedFrom") or ():
            assert derived["reference"].removeprefix("Observation/") in by_id
        assert any(
            i["system"] in (fhir.CONDITIONAL_CREATE_SYSTEM, "urn:rpm:observation-id") for i in observation["identifier"]
        )
    assert any(o["code"]["coding"][0]["code"] == "8410608" for o in stored)  # the cuff's status bits
    everything = ehr.search("Patient") + ehr.search("Device") + stored
    for resource in everything:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert medplum_validate(everything) == {}
    # Each reading knows where the EHR keeps its Observations.
    locations = db.execute("SELECT array_agg(l) FROM ehr_push_outbox, unnest(locations) l").fetchone()[0]
    assert {loc.split("/")[1] for loc in locations} == set(by_id)

    transactions = ehr.stats()["transactions"]
    again = push_until_idle(settings)
    assert again.readings_sent == 0 and ehr.stats()["transactions"] == transactions


def test_a_resend_after_a_crash_between_send_and_mark_creates_nothing_twice(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, fresh_database_url: str
) -> None:
    ward.add("ann")
    ward.store(ward.blood_pressure("ann", 1) + ward.glucose("ann", 1))
    settings = push_settings(fresh_database_url, ehr, ehr_push_timeout_s=2.0, ehr_push_lease_s=4.0)
    env = {
        **os.environ,
        **{
            f"RPM_{k.upper()}": str(v)
            for k, v in settings.model_dump().items()
            if k.startswith("ehr_push") or k == "database_url"
        },
    }
    ehr.hold_next_answer(30_000)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "ehr-push"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: ehr.stats()["held"] == 1, 20, "the EHR to commit the first Bundle")
    finally:
        worker.send_signal(signal.SIGKILL)  # between send and mark: the server committed, nobody recorded it
        worker.wait(10)
    committed = ehr.stats()["resources"]
    assert committed["Observation"] == expected_observations(db, ["ann"])
    [(state, attempts)] = db.execute("SELECT state, attempts FROM ehr_push_batches").fetchall()
    assert (state, attempts) == ("sending", 0) and outbox(db) == {"batched": 2}

    wait_until(
        lambda: db.execute("SELECT lease_until < now() FROM ehr_push_batches").fetchone()[0],
        10,
        "the dead worker's lease to lapse",
    )
    again = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "ehr-push", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert ehr.stats()["resources"] == committed  # the same Bundle again: every conditional create matched
    assert ehr.stats()["transactions"] == 2
    [(state, created, matched, entries)] = db.execute(
        "SELECT state, created, matched, entries FROM ehr_push_batches"
    ).fetchall()
    assert (state, created, matched) == ("sent", 0, entries)
    assert outbox(db) == {"sent": 2}


def push_until(p: EhrPusher, conn: psycopg.Connection, wanted: str, timeout: float = 15) -> list[str]:
    """``push_one`` until it answers ``wanted``: the results on the way (a test of retries reads them)."""
    results: list[str] = []

    def step() -> bool:
        results.append(p.push_one(conn))
        if results[-1] == "waiting":
            time.sleep(0.05)
        return results[-1] == wanted

    wait_until(step, timeout, f"push_one to answer {wanted}", step=0)
    return results


def test_a_5xx_is_tried_again_with_backoff_until_the_ehr_recovers(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    ward.add("ann")
    ward.store(ward.glucose("ann", 2))
    ehr.fail_next({"status": 503}, {"status": 502})
    p = pusher(settings, backoff_base_s=0.2)
    p.claim(db)
    started = time.monotonic()
    results = push_until(p, db, "sent")
    assert results[0] == "retry" and results.count("retry") == 2
    assert time.monotonic() - started >= 0.1 + 0.2  # 0.2 s then 0.4 s, each jittered down to half at most
    [(attempts, last_error)] = db.execute("SELECT attempts, last_error FROM ehr_push_batches").fetchall()
    assert attempts == 3 and last_error is None
    assert ehr.stats()["faultsServed"] == 2 and ehr.stats()["transactions"] == 1
    assert ehr.stats()["resources"]["Observation"] == expected_observations(db, ["ann"])
    assert outbox(db) == {"sent": 2}


def test_a_broken_or_hostile_answer_costs_a_retry_or_a_parked_batch_never_the_worker(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    ward.add("ann")
    ward.store(ward.glucose("ann", 1))
    ehr.fail_next(
        {"status": 200, "raw": "<html>proxy says hello</html>"},
        {"status": 200, "body": {"resourceType": "Bundle", "type": "transaction-response", "entry": ["x", 5, None]}},
        {"status": 200, "body": {"resourceType": "Bundle", "type": "transaction-response",
                                 "entry": [{"response": "201 Created"}] * 3}},
        {"status": 503, "body": {"resourceType": "OperationOutcome", "issue": ["down", {"details": 7,
                                                                                     "expression": "x"}]}},
        {"status": 400, "body": {"resourceType": "OperationOutcome", "issue": "not a list"}},
    )
    p = pusher(settings, backoff_base_s=0.01)
    p.claim(db)
    answers = [a for a in push_until(p, db, "parked") if a != "waiting"]
    assert answers == ["retry"] * 4 + ["parked"]  # committed or not, nobody can tell: the same Bundle again
    [(state, outcome)] = db.execute("SELECT state, outcome FROM ehr_push_batches").fetchall()
    assert state == "parked" and outcome.startswith("HTTP 400")
    assert outbox(db) == {"parked": 1}


def test_a_429_waits_as_long_as_retry_after_says(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    ward.add("ann")
    ward.store(ward.glucose("ann", 1))
    ehr.fail_next({"status": 429, "retryAfter": 1})
    p = pusher(settings, backoff_base_s=0.01)  # the backoff alone would try again at once
    p.claim(db)
    assert p.push_one(db) == "retry"
    wait_s = queries.seconds_until_retry(db)
    assert wait_s is not None and 0.9 <= wait_s <= 1.2
    [(status, error)] = db.execute("SELECT http_status, last_error FROM ehr_push_batches").fetchall()
    assert status == 429 and "injected 429" in error
    started = time.monotonic()
    assert push_until(p, db, "sent")[0] == "waiting"
    assert time.monotonic() - started >= 0.8
    assert outbox(db) == {"sent": 1}


def test_a_token_is_reused_until_the_ehr_refuses_it_then_replaced_once(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, fresh_database_url: str
) -> None:
    ward.add("ann")
    ward.store(ward.glucose("ann", 6))
    settings = push_settings(fresh_database_url, ehr, ehr_push_batch_size=2)
    p = pusher(settings)
    p.claim(db)
    assert [p.push_one(db) for _ in range(2)] == ["sent", "sent"]
    assert ehr.stats()["tokensIssued"] == 1  # cached: one token for both batches
    ehr.revoke_tokens()
    assert p.push_one(db) == "sent"
    stats = ehr.stats()
    assert stats["tokensIssued"] == 2 and stats["unauthorized"] == 1 and stats["transactions"] == 3
    assert outbox(db) == {"sent": 6}


def test_a_refused_bundle_is_parked_with_the_servers_outcome_and_rolled_back_whole(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    ward.add("ann")
    readings = ward.glucose("ann", 2)
    ward.store(readings)
    # The EHR already holds two Observations with the second reading's PHD identifier: its conditional create
    # matches both, which medplum refuses (412 multiple matches) after creating the entries before it.
    row = queries.reading_rows(db, [readings[1].id])[0]
    [identifier] = [
        i for i in reading_group(row).observations[0]["identifier"] if i["system"] == fhir.CONDITIONAL_CREATE_SYSTEM
    ]
    for _ in range(2):
        response = httpx_post(
            ehr,
            "Observation",
            {"resourceType": "Observation", "status": "final", "code": {"text": "a copy"}, "identifier": [identifier]},
        )
        assert response.status_code == 201
    p = pusher(settings)
    p.claim(db)
    assert p.push_one(db) == "parked"
    [parked] = queries.parked_batches(db)
    assert parked.http_status == 412 and "Multiple resources found matching condition" in (parked.outcome or "")
    assert outbox(db) == {"parked": 2}
    # Atomic: nothing of the refused transaction stayed (the test server's rollback; see tests/ehr_server).
    assert ehr.stats()["resources"] == {"Patient": 0, "Device": 0, "Observation": 2}
    assert ehr.stats()["rolledBack"] == 1
    assert p.push_one(db) == "idle"  # parked, not retried

    # Fixed at the EHR, the readings are queued again and go out in a new Bundle.
    ehr.reset()
    assert queries.requeue_parked(db, parked.id) == 2
    assert p.push_one(db) == "sent"
    assert outbox(db) == {"sent": 2}


def httpx_post(ehr: EhrServer, resource_type: str, resource: dict[str, Any]) -> Any:
    import httpx

    return httpx.post(
        f"{ehr.fhir_url}/{resource_type}",
        json=resource,
        timeout=10,
        headers={"Authorization": f"Bearer {ehr.token()}", "Content-Type": "application/fhir+json"},
    )


def test_only_patients_whose_consent_allows_it_are_pushed(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    ward.add("ann")
    ward.add("bob")
    ward.add("cat", team="elsewhere")  # consented to another team, not to the push team
    ward.add("dan")
    db.execute("UPDATE consents SET revoked_at = now(), revoked_by = 'bob' WHERE patient_id = 'bob'")
    db.execute("UPDATE consents SET scopes = '{alerts}' WHERE patient_id = 'dan'")  # no readings scope
    for patient in ("ann", "bob", "cat", "dan"):
        ward.store(ward.glucose(patient, 2))
    p = pusher(settings)
    assert p.claim(db) == 2  # ann's only
    # ann revokes after her readings were queued, before their Bundle was built: they are withheld.
    ward.add("eve")
    ward.store(ward.glucose("eve", 1))
    assert p.claim(db) == 1
    db.execute("UPDATE consents SET revoked_at = now(), revoked_by = 'ann' WHERE patient_id = 'ann'")
    report = p.run(once=True)
    assert report.withheld == 2 and report.readings_sent == 1
    assert outbox(db) == {"withheld": 2, "sent": 1}
    assert [p["identifier"][0]["value"] for p in ehr.search("Patient")] == ["eve"]


def test_a_reading_committed_late_is_not_skipped_by_the_watermark(
    ward: Ward, db: psycopg.Connection, settings: CloudSettings
) -> None:
    ward.add("ann")
    ward.add("bob")  # two patients: the programme-days trigger would make ann's two writers wait for each other
    [warm], [first], [second] = ward.glucose("ann", 1), ward.glucose("bob", 1), ward.glucose("ann", 1)
    p = pusher(settings)
    # On TimescaleDB the first value of a new time range creates its chunk, and the creator's lock lasts until
    # it commits: store one before, so the slow writer below holds no lock the second writer needs.
    ward.store([warm], gateway_id="gw-home-2")  # ann's gateway (its devices are bound at first contact)
    assert p.claim(db) == 1
    with psycopg.connect(db.info.dsn) as slow, slow.transaction():
        # An ingest transaction stores a reading (stored_at = clock_timestamp(), as INSERT_NEW) and is slow to
        # commit; meanwhile a later reading commits. The watermark must not move past the first.
        slow.execute(ingest_queries.UPSERT_GATEWAYS, (["gw-home-1"], [datetime.now(UTC)]))
        slow.execute(
            "INSERT INTO readings (id, patient_id, device_uid, gateway_id, batch_id, kind, measured_at,"
            " clock_judgement, stored_at) VALUES (%s, 'bob', %s, 'gw-home-1', 'slow', 'glucose', now(), 'device',"
            " clock_timestamp())",
            (first.id, first.device.uid),
        )
        slow.execute(
            "INSERT INTO observations (reading_id, patient_id, kind, metric, measured_at, value, unit)"
            " VALUES (%s, 'bob', 'glucose', 'glucose', now(), 101, 'mg/dL')",
            (first.id,),
        )
        ward.store([second], gateway_id="gw-home-2")
        assert p.claim(db) == 0  # the second is past the horizon: the slow writer's start
    assert p.claim(db) == 2
    assert outbox(db) == {"pending": 3}


def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", "ehr-push", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_bad_settings_stop_the_command_with_one_line_naming_each(tmp_path: Any, fresh_database_url: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = tmp_path / "p256.pem"
    p256.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("RPM_EHR_PUSH")}
    base["RPM_DATABASE_URL"] = fresh_database_url
    unset = run_command(base, "--once")
    assert unset.returncode == 2 and unset.stderr.startswith("error: EHR push is not configured")
    bad = run_command(
        {
            **base,
            "RPM_EHR_PUSH_FHIR_URL": "http://ehr.example.org/fhir",
            "RPM_EHR_PUSH_TOKEN_URL": "https://ehr.example.org/token",
            "RPM_EHR_PUSH_KEY_FILE": str(p256),
            "RPM_EHR_PUSH_KEY_ID": "k1",
            "RPM_EHR_PUSH_CARE_TEAMS": TEAM,
        },
        "--once",
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    for words in ("RPM_EHR_PUSH_CLIENT_ID is not set", "RPM_EHR_PUSH_FHIR_URL must be https", "ES384 needs P-384"):
        assert words in bad.stderr
    missing = run_command(
        {
            **base,
            "RPM_EHR_PUSH_FHIR_URL": "https://ehr.example.org/fhir",
            "RPM_EHR_PUSH_TOKEN_URL": "https://ehr.example.org/token",
            "RPM_EHR_PUSH_CLIENT_ID": "c",
            "RPM_EHR_PUSH_KEY_FILE": str(tmp_path / "absent.pem"),
            "RPM_EHR_PUSH_KEY_ID": "k1",
            "RPM_EHR_PUSH_CARE_TEAMS": "no-such-team",
        },
        "--status",
    )
    assert missing.returncode == 2 and "cannot be read" in missing.stderr
    numbers = run_command({**base, "RPM_EHR_PUSH_BATCH_SIZE": "0"}, "--once")
    assert numbers.returncode == 2 and "RPM_EHR_PUSH_BATCH_SIZE" in numbers.stderr


def test_status_shows_a_parked_batch_and_an_unknown_care_team_is_refused(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, settings: CloudSettings
) -> None:
    env = {
        **os.environ,
        **{
            f"RPM_{k.upper()}": str(v)
            for k, v in settings.model_dump().items()
            if k.startswith("ehr_push") or k == "database_url"
        },
    }
    ward.add("ann")
    ward.store(ward.glucose("ann", 1))
    ehr.fail_next({"status": 422, "text": "Observation.code: unknown to this EHR"})
    p = pusher(settings)
    p.claim(db)
    assert p.push_one(db) == "parked"
    shown = run_command(env, "--status")
    assert shown.returncode == 0, shown.stderr
    assert "outbox: parked 1" in shown.stdout
    assert "HTTP 422: error transient: Observation.code: unknown to this EHR" in shown.stdout
    refused = run_command({**env, "RPM_EHR_PUSH_CARE_TEAMS": f"{TEAM},nobody"}, "--status")
    assert refused.returncode == 2 and "no such care team: nobody" in refused.stderr


def test_the_ehr_takes_an_rs384_assertion_and_refuses_replayed_expired_or_foreign_ones(
    ward: Ward, db: psycopg.Connection, ehr: EhrServer, fresh_database_url: str
) -> None:
    import httpx
    import jwt as pyjwt

    from cloud.ehr_push.smart import ASSERTION_TYPE, client_assertion

    settings = push_settings(fresh_database_url, ehr, key_file=ehr.rsa_key_file, kid=ehr.rsa_kid)
    config = load_push_config(settings)
    assert config.algorithm == "RS384"
    ward.add("ann")
    ward.store(ward.glucose("ann", 1))
    assert push_until_idle(settings).readings_sent == 1

    def token_answer(assertion: str) -> int:
        return httpx.post(
            ehr.token_url,
            timeout=10,
            data={
                "grant_type": "client_credentials",
                "scope": config.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        ).status_code

    assertion = client_assertion(config)
    header = pyjwt.get_unverified_header(assertion)
    claims = pyjwt.decode(assertion, options={"verify_signature": False})
    assert header == {"alg": "RS384", "kid": ehr.rsa_kid, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == ehr.client_id and claims["aud"] == ehr.token_url
    assert 0 < claims["exp"] - time.time() <= 300
    assert token_answer(assertion) == 200
    assert token_answer(assertion) == 401  # the same jti again
    assert token_answer(client_assertion(config, now=time.time() - 600)) == 401  # expired
    foreign = load_push_config(push_settings(fresh_database_url, ehr, key_file=ehr.rsa_key_file, kid=ehr.ec_kid))
    assert token_answer(client_assertion(foreign)) == 401  # signed by a key other than the one its kid names
    refused = ehr.stats()["assertionsRefused"]
    assert any("replayed" in r for r in refused) and len(refused) == 3
