"""Message validation against the contract, without services: what is stored, rejected, dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cloud.ingest.validation import validate_message, validate_status
from gateway.contract import MAX_PAYLOAD_BYTES, Batch, GatewayStatus
from tests.cloud.ingest.ingest_traffic import bp_reading

pytestmark = pytest.mark.unit
TOPIC = "rpm/v1/gw/gw-1/readings"


def batch_json(readings=None, **changes) -> bytes:  # type: ignore[no-untyped-def]
    batch = Batch(gateway_id="gw-1", batch_id="b-1", sent_at=datetime.now(UTC),
                  readings=readings or [bp_reading("ble:v:1"), bp_reading("ble:v:1")])
    document = json.loads(batch.model_dump_json())
    document.update(changes)
    return json.dumps(document).encode()


def test_valid_batch_is_accepted_whole() -> None:
    result = validate_message(TOPIC, batch_json())
    assert (result.ack_gateway, result.batch_id, len(result.readings)) == ("gw-1", "b-1", 2)
    assert not result.rejected and not result.dead_letters


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe", "not JSON"),
    (b'{"v": 1, "gateway_id": "gw-1"', "not JSON"),
    (b"[1, 2]", "invalid batch"),
    (b'{"v": 1, "gateway_id": "gw-1", "batch_id": "b", "sent_at": "2026-01-01T00:00:00Z", "readings": []}',
     "readings: List should have at least 1 item"),
])
def test_unusable_messages_are_dead_lettered_with_a_reason(payload: bytes, reason: str) -> None:
    result = validate_message(TOPIC, payload)
    assert not result.readings
    [dead] = result.dead_letters
    assert reason in dead.reason and dead.payload == payload and dead.gateway_id == "gw-1"


def test_wrong_version_is_refused_and_the_sender_told() -> None:
    result = validate_message(TOPIC, batch_json(v=2))
    assert "v: Input should be 1" in result.dead_letters[0].reason
    assert result.batch_id == "b-1" and len(result.rejected) == 2 and not result.readings


def test_one_bad_reading_is_rejected_and_its_neighbours_kept() -> None:
    document = json.loads(batch_json())
    document["readings"][0]["values"]["systolic"]["value"] = -5
    result = validate_message(TOPIC, json.dumps(document).encode())
    assert [r.id for r in result.readings] == [document["readings"][1]["id"]]
    [rejection] = result.rejected
    assert rejection.id == document["readings"][0]["id"] and "outside" in rejection.reason
    assert result.dead_letters[0].reading_id == rejection.id


def test_batch_claiming_another_gateway_than_its_topic_is_refused() -> None:
    result = validate_message("rpm/v1/gw/gw-2/readings", batch_json())
    assert not result.readings and len(result.rejected) == 2
    assert result.ack_gateway == "gw-2" and "does not match" in result.dead_letters[0].reason


def test_oversize_payload_is_dead_lettered_with_its_size_and_a_prefix() -> None:
    payload = b"x" * (MAX_PAYLOAD_BYTES + 1)
    [dead] = validate_message(TOPIC, payload).dead_letters
    assert str(MAX_PAYLOAD_BYTES + 1) in dead.reason and len(dead.payload) == 64 * 1024


def test_gateway_status_is_checked_against_its_topic() -> None:
    status = GatewayStatus(gateway_id="gw-1", online=True, at=datetime.now(UTC)).model_dump_json().encode()
    assert validate_status("rpm/v1/gw/gw-1/status", status).gateway_id == "gw-1"  # type: ignore[union-attr]
    assert "does not match" in validate_status("rpm/v1/gw/gw-9/status", status).reason  # type: ignore[union-attr]


def test_a_status_whose_time_overflows_in_utc_is_a_dead_letter_not_an_exception() -> None:
    payload = b'{"v": 1, "gateway_id": "gw-1", "online": true, "at": "0001-01-01T00:30:00+05:00"}'
    dead = validate_status("rpm/v1/gw/gw-1/status", payload)
    assert dead.reason.startswith("invalid gateway status: at:") and "UTC" in dead.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("serial", "SN\u00001", "U+0000"), ("manufacturer", "A&D\u001b[2J", "U+001B"), ("model", "x" * 65, "at most 64"),
    ("uid", "ble:\ud800", "valid string"),  # pydantic refuses a lone surrogate itself
])
def test_hostile_device_strings_reject_their_reading_alone(field: str, value: str, reason: str) -> None:
    document = json.loads(batch_json())
    document["readings"][1]["device"][field] = value
    result = validate_message(TOPIC, json.dumps(document).encode())
    assert [r.id for r in result.readings] == [document["readings"][0]["id"]]
    [rejection] = result.rejected
    assert f"device.{field}" in rejection.reason and reason in rejection.reason
    assert "\x00" not in rejection.reason and "\x1b" not in rejection.reason


def test_a_hostile_batch_id_is_never_echoed_into_an_ack_or_a_dead_letter() -> None:
    result = validate_message(TOPIC, batch_json(batch_id="b\u00001", sent_at="9999-12-31T23:30:00-05:00"))
    assert result.batch_id is None and not result.readings
    [dead] = result.dead_letters
    assert dead.batch_id is None and "sent_at" in dead.reason and "\x00" not in dead.reason


def test_device_times_a_gateway_keeps_as_evidence_still_pass() -> None:
    # A cuff with an unset clock (year 2000), a BLE Date Time of year 1582: the gateway used its own
    # time for measured_at (clock_unset) and keeps the device's beside it.
    for device_time in ("2000-01-01T00:03:00", "1582-10-15T00:00:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59"):
        document = json.loads(batch_json())
        document["readings"][0]["device_time"] = device_time
        document["readings"][0]["flags"] = ["clock_unset"]
        result = validate_message(TOPIC, json.dumps(document).encode())
        assert len(result.readings) == 2 and not result.rejected, device_time
