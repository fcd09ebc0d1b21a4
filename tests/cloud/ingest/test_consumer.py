"""The ingest worker against the real broker and PostgreSQL: idempotence, acks after commit, bad input."""

from __future__ import annotations

import json

import psycopg
import pytest

from gateway.contract import MAX_PAYLOAD_BYTES, readings_topic
from tests.cloud.ingest.ingest_traffic import bp_reading
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def count(url: str, sql: str, *params: object) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]  # type: ignore[index]


def test_replayed_batch_is_stored_once_and_acked_three_times(ingest_settings, start_worker, gateway) -> None:
    worker = start_worker(ingest_settings)
    batch = gateway.batch([bp_reading("ble:aa:01"), bp_reading("ble:aa:01")])
    for _ in range(3):
        gateway.publish(batch)
    acks = wait_until(lambda: len(gateway.acks_for(batch.batch_id)) == 3 and gateway.acks_for(batch.batch_id),
                      what="three acks")
    ids = [r.id for r in batch.readings]
    assert all(sorted(a.accepted) == sorted(ids) and not a.rejected for a in acks)
    url = ingest_settings.database_url
    assert count(url, "SELECT count(*) FROM readings WHERE batch_id = %s", batch.batch_id) == 2
    assert count(url, "SELECT count(*) FROM observations WHERE reading_id = ANY(%s)", ids) == 6
    assert worker.stats.readings_stored == 2 and worker.stats.duplicates == 4


def test_ack_is_published_only_after_the_reading_is_committed(ingest_settings, start_worker, gateway) -> None:
    start_worker(ingest_settings)
    seen_in_db: list[int] = []
    batch = gateway.batch([bp_reading("ble:aa:02")])

    def on_ack(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        seen_in_db.append(count(ingest_settings.database_url, "SELECT count(*) FROM readings WHERE id = %s",
                                batch.readings[0].id))

    gateway.client.message_callback_add(f"rpm/v1/gw/{gateway.gateway_id}/acks", on_ack)
    gateway.publish(batch)
    wait_until(lambda: seen_in_db, what="the ack")
    assert seen_in_db == [1]


def test_bad_messages_become_dead_letters_and_the_next_batch_is_stored(ingest_settings, start_worker,
                                                                       gateway) -> None:
    start_worker(ingest_settings)
    good = gateway.batch([bp_reading("ble:aa:03")])
    document = json.loads(good.model_dump_json())
    wrong_version = dict(document, v=2, batch_id="wrong-version")
    out_of_range = json.loads(gateway.batch([bp_reading("ble:aa:03")], "out-of-range").model_dump_json())
    out_of_range["readings"][0]["values"]["systolic"]["value"] = 900
    other_gateway = dict(document, gateway_id="someone-else", batch_id="impostor")
    payloads = [b"\x00\xffgarbage", good.model_dump_json()[:40].encode(), json.dumps(wrong_version).encode(),
                json.dumps(out_of_range).encode(), b"{" + b" " * (10 * 1024 * 1024) + b"}",
                json.dumps(other_gateway).encode(), b"[]"]
    for payload in payloads:
        gateway.publish(payload)
    gateway.publish(good)
    wait_until(lambda: gateway.acks_for(good.batch_id), what="the good batch's ack")
    # By this gateway's topic: statuses retained on this broker by earlier tests' gateways arrive too.
    topic = readings_topic(gateway.gateway_id)
    wait_until(lambda: count(ingest_settings.database_url, "SELECT count(*) FROM dead_letters WHERE topic = %s",
                             topic) == len(payloads), what="every bad message dead-lettered")

    with psycopg.connect(ingest_settings.database_url) as conn:
        reasons = [row[0] for row in conn.execute("SELECT reason FROM dead_letters WHERE topic = %s ORDER BY id",
                                                  (topic,))]
        big = conn.execute("SELECT octet_length(payload) FROM dead_letters WHERE reason LIKE '%%exceeds%%'").fetchone()
        stored = conn.execute("SELECT count(*) FROM readings WHERE id = %s", (good.readings[0].id,)).fetchone()
    assert len(reasons) == len(payloads)
    assert any(r.startswith("not JSON") for r in reasons)
    assert any("v: Input should be 1" in r for r in reasons)
    assert any("systolic" in r and "outside" in r for r in reasons)
    assert any(str(MAX_PAYLOAD_BYTES) in r for r in reasons) and big is not None and big[0] <= 64 * 1024
    assert any("does not match the topic" in r for r in reasons)
    assert stored == (1,)
    # The sender is told what it cannot resend successfully, so its outbox can quarantine it.
    [rejected] = gateway.acks_for("out-of-range")
    assert rejected.accepted == [] and "outside" in rejected.rejected[0].reason
    [impostor] = gateway.acks_for("impostor")
    assert impostor.rejected and not impostor.accepted


def test_one_bad_reading_is_rejected_while_its_batch_neighbours_are_stored(ingest_settings, start_worker,
                                                                           gateway) -> None:
    start_worker(ingest_settings)
    good, bad = bp_reading("ble:aa:04"), bp_reading("ble:aa:04")
    document = json.loads(gateway.batch([good, bad]).model_dump_json())
    document["readings"][1]["values"]["diastolic"]["unit"] = "kPa"
    gateway.publish(json.dumps(document))
    [ack] = wait_until(lambda: gateway.acks_for(document["batch_id"]), what="the ack")
    assert ack.accepted == [good.id]
    assert [r.id for r in ack.rejected] == [bad.id] and "canonical" in ack.rejected[0].reason
    url = ingest_settings.database_url
    assert count(url, "SELECT count(*) FROM readings WHERE batch_id = %s", document["batch_id"]) == 1
    assert count(url, "SELECT count(*) FROM dead_letters WHERE reading_id = %s", bad.id) == 1


def test_a_reading_the_database_refuses_is_rejected_alone_without_stopping_the_worker(
        ingest_settings, start_worker, gateway) -> None:
    # The contract now refuses what PostgreSQL cannot store (NUL, lone surrogates): a database rule
    # the contract does not know stands in for the next such class (a real trigger, a real refusal).
    with psycopg.connect(ingest_settings.database_url, autocommit=True) as conn:
        conn.execute("""
            CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.device_uid = 'ble:refused:05' THEN RAISE EXCEPTION 'refused by the test rule'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_marked BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION refuse_marked();
        """)
    worker = start_worker(ingest_settings)
    neighbours = [bp_reading("ble:aa:05") for _ in range(4)]
    poisoned = bp_reading("ble:refused:05")
    first = gateway.batch([*neighbours[:2], poisoned, *neighbours[2:]])
    second = gateway.batch([bp_reading("ble:aa:05")])
    gateway.publish(first)
    gateway.publish(second)
    [answer] = wait_until(lambda: gateway.acks_for(first.batch_id), what="the refused batch's ack")
    wait_until(lambda: gateway.acks_for(second.batch_id), what="the next batch's ack")
    assert sorted(answer.accepted) == sorted(r.id for r in neighbours)
    [rejection] = answer.rejected
    assert rejection.id == poisoned.id and "not stored" in rejection.reason
    assert "refused by the test rule" in rejection.reason
    url = ingest_settings.database_url
    assert count(url, "SELECT count(*) FROM readings WHERE batch_id = %s", first.batch_id) == 4
    assert count(url, "SELECT count(*) FROM readings WHERE batch_id = %s", second.batch_id) == 1
    assert count(url, "SELECT count(*) FROM dead_letters WHERE reading_id = %s", poisoned.id) == 1
    assert worker.stats.isolated_failures >= 1 and worker.healthy()


def test_gateway_status_is_recorded(ingest_settings, start_worker, gateway, mqtt_broker) -> None:
    if not mqtt_broker.supports_v5:
        pytest.skip("shared status subscription needs MQTT v5")
    from datetime import UTC, datetime

    from gateway.contract import GatewayStatus, status_topic

    start_worker(ingest_settings)
    status = GatewayStatus(gateway_id=gateway.gateway_id, online=True, at=datetime.now(UTC), outbox_depth=7)
    gateway.publish(status.model_dump_json(), topic=status_topic(gateway.gateway_id))
    # Not a count of statuses: earlier tests' gateways left theirs retained on this broker.
    wait_until(lambda: count(ingest_settings.database_url,
                             "SELECT coalesce(max((status->>'outbox_depth')::int), -1) FROM gateways WHERE id = %s",
                             gateway.gateway_id) == 7, what="the status")
