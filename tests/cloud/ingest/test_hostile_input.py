"""Hostile input against real ingest workers, the real broker and PostgreSQL (issue 14).

Each test is one class of attack or accident that used to silence, hide or redirect a patient's
data: a timestamp whose UTC form overflows (in a reading, and as a retained status that every worker
receives on every start), a NUL inside a device string among 99 good neighbours, a gateway
publishing another gateway's device, and a reading id offered again with other content.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from gateway.contract import Reading, compute_reading_id, status_topic
from gateway.metrics import METRICS
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
OVERFLOWING = "0001-01-01T00:30:00+05:00"
"""Valid ISO 8601 with an offset, but 00:30 on 1 January of year 1 at +05:00 is before year 1 in UTC."""


def count(url: str, sql: str, *params: object) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]  # type: ignore[index]


def cuff_reading(uid: str, sequence: int, systolic: float = 128, **changes: object) -> Reading:
    """A cuff record as its gateway builds it: the id follows from device uid and sequence number."""
    now = datetime.now(UTC)
    document = {
        "id": compute_reading_id(uid, "blood_pressure", None, sequence=sequence),
        "device": {"uid": uid, "transport": "ble", "profile": "ble.blood_pressure", "model": "UA-651"},
        "kind": "blood_pressure", "measured_at": now - timedelta(minutes=1), "received_at": now,
        "device_time": datetime(2026, 3, 1, 8, 0) + timedelta(minutes=sequence), "clock": {"judgement": "device"},
        "sequence": sequence, "raw": f"1e{int(systolic):02x}00",
        "values": {"systolic": {"value": systolic, "unit": METRICS["systolic"].unit},
                   "diastolic": {"value": 80, "unit": METRICS["diastolic"].unit}},
    }
    document.update(changes)
    return Reading.model_validate(document)


def test_an_overflowing_timestamp_is_rejected_alone_and_the_worker_goes_on(ingest_settings, start_worker,
                                                                           gateway) -> None:
    worker = start_worker(ingest_settings)
    good = [bp_reading("ble:ovf:01") for _ in range(3)]
    document = json.loads(gateway.batch([*good, bp_reading("ble:ovf:01")]).model_dump_json())
    document["readings"][3]["measured_at"] = OVERFLOWING
    poisoned_id = document["readings"][3]["id"]
    gateway.publish(json.dumps(document))
    # The whole batch's sent_at overflowing too: the message is dead-lettered and answered.
    whole = json.loads(gateway.batch([bp_reading("ble:ovf:01")]).model_dump_json())
    whole["sent_at"] = OVERFLOWING
    gateway.publish(json.dumps(whole))
    after = gateway.batch([bp_reading("ble:ovf:01")])
    gateway.publish(after)

    [ack] = wait_until(lambda: gateway.acks_for(document["batch_id"]), what="the ack of the poisoned batch")
    assert sorted(ack.accepted) == sorted(r.id for r in good)
    [rejection] = ack.rejected
    assert rejection.id == poisoned_id and "measured_at" in rejection.reason and "UTC" in rejection.reason
    [whole_ack] = wait_until(lambda: gateway.acks_for(whole["batch_id"]), what="the ack of the overflowing batch")
    assert not whole_ack.accepted and "sent_at" in whole_ack.rejected[0].reason
    wait_until(lambda: gateway.acks_for(after.batch_id), what="the next batch stored")
    assert worker.healthy() and worker.ready()
    url = ingest_settings.database_url
    assert count(url, "SELECT count(*) FROM readings WHERE id = ANY(%s)", [r.id for r in good]) == 3
    assert count(url, "SELECT count(*) FROM dead_letters WHERE reading_id = %s", poisoned_id) == 1


def test_a_retained_poisoned_status_never_wedges_a_worker_or_its_restart(ingest_settings, start_worker, gateway,
                                                                         mqtt_broker) -> None:
    status = {"v": 1, "gateway_id": gateway.gateway_id, "online": True, "at": OVERFLOWING}
    info = gateway.client.publish(status_topic(gateway.gateway_id), json.dumps(status), qos=1, retain=True)
    info.wait_for_publish(10)
    url = ingest_settings.database_url
    topic = status_topic(gateway.gateway_id)
    try:
        for start in range(2):  # a worker, then its restart: each receives the retained poison again
            worker = start_worker(ingest_settings)
            wait_until(lambda n=start: count(url, "SELECT count(*) FROM dead_letters WHERE topic = %s", topic) > n,
                       what="the retained status dead-lettered")
            batch = gateway.batch([bp_reading("ble:retained:01")])
            gateway.publish(batch)
            [ack] = wait_until(lambda b=batch: gateway.acks_for(b.batch_id), what="readings still consumed")
            assert ack.accepted == [batch.readings[0].id]
            assert worker.healthy()
            worker.stop(drain_timeout_s=1)
        reason = count(url, "SELECT count(*) FROM dead_letters WHERE topic = %s AND reason LIKE %s", topic,
                       "%at:%UTC%")
        assert reason >= 2
    finally:
        gateway.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)


def test_a_nul_in_a_model_string_rejects_that_reading_alone(ingest_settings, start_worker, gateway) -> None:
    start_worker(ingest_settings)
    readings = [bp_reading("ble:nul:01") for _ in range(100)]
    document = json.loads(gateway.batch(readings).model_dump_json())
    document["readings"][42]["device"]["model"] = "UA\u0000651"
    gateway.publish(json.dumps(document))
    [ack] = wait_until(lambda: gateway.acks_for(document["batch_id"]), what="the ack")
    assert len(ack.accepted) == 99
    [rejection] = ack.rejected
    assert rejection.id == readings[42].id and "device.model" in rejection.reason and "U+0000" in rejection.reason
    url = ingest_settings.database_url
    assert count(url, "SELECT count(*) FROM readings WHERE batch_id = %s", document["batch_id"]) == 99
    assert count(url, "SELECT count(*) FROM readings WHERE id = %s", readings[42].id) == 0
    assert count(url, "SELECT count(*) FROM dead_letters WHERE reading_id = %s", readings[42].id) == 1


def test_a_gateway_cannot_write_readings_for_another_gateways_device(ingest_settings, start_worker, gateway,
                                                                    mqtt_broker, unique_id) -> None:
    url = ingest_settings.database_url
    cuff = f"ble:{unique_id}:cuff"
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO patients (id) VALUES (%s)", (f"pt-{unique_id}",))
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'unknown')", (cuff,))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)",
                     (cuff, f"pt-{unique_id}"))
    worker = start_worker(ingest_settings)
    first = gateway.batch([cuff_reading(cuff, 1)])
    gateway.publish(first)  # first contact binds the cuff to the gateway it speaks through
    wait_until(lambda: gateway.acks_for(first.batch_id), what="the genuine first reading")

    intruder = Gateway(mqtt_broker.host, mqtt_broker.port, f"gw-{unique_id}-b", v5=mqtt_broker.supports_v5)
    try:
        # Ids are predictable: the intruder takes the id of the cuff's next record, with a crisis value.
        forged = intruder.batch([cuff_reading(cuff, 2, systolic=70)])
        intruder.publish(forged)
        [refused] = wait_until(lambda: intruder.acks_for(forged.batch_id), what="the intruder's ack")
    finally:
        intruder.close()
    assert refused.accepted == []
    reason = refused.rejected[0].reason
    assert "bound to another gateway" in reason and gateway.gateway_id not in reason, "names no other gateway"
    forged_id = forged.readings[0].id
    assert count(url, "SELECT count(*) FROM readings WHERE id = %s", forged_id) == 0
    with psycopg.connect(url) as conn:
        [event] = conn.execute("SELECT kind, gateway_id, device_uid, detail FROM security_events").fetchall()
        dead = conn.execute("SELECT gateway_id FROM dead_letters WHERE reading_id = %s", (forged_id,)).fetchall()
        twin_events = conn.execute("SELECT count(*) FROM twin_events WHERE data::text LIKE %s",
                                   (f"%{forged_id}%",)).fetchone()
    assert event[:3] == ("foreign_device", intruder.gateway_id, cuff)
    assert event[3]["bound_gateway_id"] == gateway.gateway_id
    assert dead == [(intruder.gateway_id,)]
    assert twin_events == (0,), "the hooks never saw the forged reading"
    assert worker.stats.security_events == 1

    genuine = gateway.batch([cuff_reading(cuff, 2, systolic=131)])
    gateway.publish(genuine)
    [ack] = wait_until(lambda: gateway.acks_for(genuine.batch_id), what="the genuine reading's ack")
    assert ack.accepted == [forged_id], "same id as the forged one, stored as the genuine reading"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT r.gateway_id, r.patient_id, o.value FROM readings r JOIN observations o"
                           " ON o.reading_id = r.id AND o.metric = 'systolic' WHERE r.id = %s", (forged_id,)).fetchone()
        bound = conn.execute("SELECT bound_gateway_id, bound_by FROM devices WHERE uid = %s", (cuff,)).fetchone()
    assert row == (gateway.gateway_id, f"pt-{unique_id}", 131)
    assert bound == (gateway.gateway_id, "first contact")


def test_an_id_stored_with_other_content_is_a_conflict_never_a_duplicate(ingest_settings, start_worker,
                                                                        gateway) -> None:
    worker = start_worker(ingest_settings)
    url = ingest_settings.database_url
    original = cuff_reading("ble:conflict:01", 7, systolic=120)
    first = gateway.batch([original])
    gateway.publish(first)
    wait_until(lambda: gateway.acks_for(first.batch_id), what="the original stored")

    # Same id, other values (and raw frame): refused, kept for review, the stored row untouched.
    other = original.model_copy(update={"values": {**original.values, "systolic": original.values["systolic"]
                                                   .model_copy(update={"value": 190.0})}, "raw": "1ebe00"})
    # An honest re-read of the same record: a new clock estimate moves measured_at and the judgement.
    reread = Reading.model_validate({**original.model_dump(), "received_at": datetime.now(UTC),
                                     "measured_at": original.measured_at - timedelta(minutes=7),
                                     "flags": ["clock_unset"], "clock": {"judgement": "corrected", "offset_s": 420.0}})
    conflict, replay = gateway.batch([other]), gateway.batch([reread])
    gateway.publish(conflict)
    gateway.publish(replay)
    [refused] = wait_until(lambda: gateway.acks_for(conflict.batch_id), what="the conflicting copy's ack")
    [confirmed] = wait_until(lambda: gateway.acks_for(replay.batch_id), what="the re-read's ack")
    assert refused.accepted == [] and "id conflict" in refused.rejected[0].reason
    assert confirmed.accepted == [original.id] and not confirmed.rejected
    with psycopg.connect(url) as conn:
        value = conn.execute("SELECT value FROM observations WHERE reading_id = %s AND metric = 'systolic'",
                             (original.id,)).fetchall()
        [event] = conn.execute("SELECT kind, reading_id, detail FROM security_events").fetchall()
        [payload] = conn.execute("SELECT payload FROM dead_letters WHERE reading_id = %s", (original.id,)).fetchone()
    assert value == [(120,)]
    assert event[:2] == ("id_conflict", original.id)
    assert event[2]["stored"]["batch_id"] == first.batch_id and event[2]["batch_id"] == conflict.batch_id
    assert json.loads(payload)["values"]["systolic"]["value"] == 190, "the offered copy is kept"
    assert worker.stats.security_events == 1 and worker.stats.duplicates == 1


def test_first_contact_binds_a_device_to_one_gateway_even_when_two_race(ingest_settings, start_worker, gateway,
                                                                       mqtt_broker, unique_id) -> None:
    if not mqtt_broker.supports_v5:
        pytest.skip("two workers need a shared subscription (MQTT v5)")
    start_worker(ingest_settings)
    start_worker(ingest_settings)
    other = Gateway(mqtt_broker.host, mqtt_broker.port, f"gw-{unique_id}-b", v5=mqtt_broker.supports_v5)
    cuff = f"ble:{unique_id}:race"
    try:
        sent = {gw.gateway_id: [gw.batch([cuff_reading(cuff, 100 * n + i, systolic=110 + n)]) for i in range(15)]
                for n, gw in enumerate((gateway, other))}
        for mine, theirs in zip(*sent.values(), strict=True):  # interleaved: both gateways' first contacts race
            gateway.client.publish(f"rpm/v1/gw/{gateway.gateway_id}/readings", mine.model_dump_json(), qos=1)
            other.client.publish(f"rpm/v1/gw/{other.gateway_id}/readings", theirs.model_dump_json(), qos=1)
        for gw in (gateway, other):
            wait_until(lambda g=gw: len(g.acks) == 15, what=f"every ack to {gw.gateway_id}")
        acks = {gw.gateway_id: gw.acks for gw in (gateway, other)}
    finally:
        other.close()
    with psycopg.connect(ingest_settings.database_url) as conn:
        [(bound,)] = conn.execute("SELECT bound_gateway_id FROM devices WHERE uid = %s", (cuff,)).fetchall()
        stored = conn.execute("SELECT DISTINCT gateway_id FROM readings WHERE device_uid = %s", (cuff,)).fetchall()
    assert stored == [(bound,)], "every stored reading came through the gateway the device is bound to"
    assert all(a.accepted and not a.rejected for a in acks[bound])
    loser = next(g for g in acks if g != bound)
    assert all(not a.accepted and "bound to another gateway" in a.rejected[0].reason for a in acks[loser])


def test_rebind_moves_a_device_to_another_gateway_with_an_audit_row(ingest_settings, start_worker, gateway,
                                                                   mqtt_broker, unique_id) -> None:
    import subprocess
    import sys
    from pathlib import Path

    url = ingest_settings.database_url
    cuff = f"ble:{unique_id}:moved"
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO patients (id) VALUES (%s)", (f"pt-{unique_id}",))
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'unknown')", (cuff,))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)",
                     (cuff, f"pt-{unique_id}"))
    start_worker(ingest_settings)
    old = gateway.batch([cuff_reading(cuff, 1)])
    gateway.publish(old)
    wait_until(lambda: gateway.acks_for(old.batch_id), what="first contact through the old gateway")
    new_gateway = f"gw-{unique_id}-new"
    done = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "rebind", cuff, new_gateway, "--reason", "replaced the home hub",
         "--actor", "ops@example", "--database-url", url],
        cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"bound to {new_gateway} (was {gateway.gateway_id})" in done.stdout
    assert "has never connected" in done.stdout

    replacement = Gateway(mqtt_broker.host, mqtt_broker.port, new_gateway, v5=mqtt_broker.supports_v5)
    try:
        moved = replacement.batch([cuff_reading(cuff, 2)])
        replacement.publish(moved)
        [accepted] = wait_until(lambda: replacement.acks_for(moved.batch_id), what="the new gateway's reading")
    finally:
        replacement.close()
    stale = gateway.batch([cuff_reading(cuff, 3)])
    gateway.publish(stale)
    [refused] = wait_until(lambda: gateway.acks_for(stale.batch_id), what="the old gateway's reading")
    assert accepted.accepted == [moved.readings[0].id]
    assert refused.accepted == [] and "bound to another gateway" in refused.rejected[0].reason
    with psycopg.connect(url) as conn:
        [audit] = conn.execute("SELECT subject, role, patient_ids, outcome, detail FROM audit_log"
                               " WHERE action = 'rpm-cloud rebind'").fetchall()
        bound = conn.execute("SELECT bound_gateway_id, bound_by FROM devices WHERE uid = %s", (cuff,)).fetchone()
    assert audit[:4] == ("ops@example", "operator", [f"pt-{unique_id}"], "allowed")
    assert audit[4] == {"device_uid": cuff, "from_gateway_id": gateway.gateway_id, "to_gateway_id": new_gateway,
                        "reason": "replaced the home hub"}
    assert bound == (new_gateway, "ops@example")
