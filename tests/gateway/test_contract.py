"""The wire contract: what it accepts, what it rejects and says why, and deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gateway.contract import (
    INGEST_SUBSCRIPTION,
    Ack,
    Batch,
    Clock,
    ClockJudgement,
    Device,
    Reading,
    Value,
    acks_topic,
    alerts_topic,
    compute_reading_id,
    gateway_id_from_topic,
    readings_topic,
    status_topic,
)

pytestmark = pytest.mark.unit

DEVICE = Device(uid="ble:00:11:22:33:44:55", transport="ble", profile="ble.blood_pressure")


def reading(**overrides) -> Reading:
    fields = dict(
        id="0" * 32,
        device=DEVICE,
        kind="blood_pressure",
        measured_at=datetime(2026, 3, 14, 7, 5, 9, tzinfo=UTC),
        clock=Clock(judgement=ClockJudgement.DEVICE),
        values={"systolic": Value(value=142, unit="mm[Hg]"), "diastolic": Value(value=91, unit="mm[Hg]")},
    )
    fields.update(overrides)
    return Reading(**fields)


def test_topics_follow_the_fixed_contract() -> None:
    assert readings_topic("gw-1") == "rpm/v1/gw/gw-1/readings"
    assert acks_topic("gw-1") == "rpm/v1/gw/gw-1/acks"
    assert status_topic("gw-1") == "rpm/v1/gw/gw-1/status"
    assert alerts_topic("p-9") == "rpm/v1/alerts/p-9"
    assert INGEST_SUBSCRIPTION == "$share/ingest/rpm/v1/gw/+/readings"
    assert gateway_id_from_topic("rpm/v1/gw/gw-1/readings") == "gw-1"
    assert gateway_id_from_topic("rpm/v1/gw/a/b/readings") is None


def test_batch_round_trips_through_json() -> None:
    batch = Batch(gateway_id="gw-1", batch_id="b-1", sent_at=datetime.now(UTC), readings=[reading()])
    assert Batch.model_validate_json(batch.model_dump_json()) == batch


def test_measured_at_is_normalised_to_utc_and_must_be_aware() -> None:
    paris = timezone(timedelta(hours=1))
    r = reading(measured_at=datetime(2026, 3, 14, 8, 5, 9, tzinfo=paris))
    assert r.measured_at == datetime(2026, 3, 14, 7, 5, 9, tzinfo=UTC)
    assert r.measured_at.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError, match="timezone"):
        reading(measured_at=datetime(2026, 3, 14, 7, 5, 9))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"values": {"systolic": Value(value=18.9, unit="kPa")}}, "unit must be canonical"),
        ({"values": {"glucose": Value(value=100, unit="mg/dL")}}, "belongs to kind glucose"),
        ({"values": {"nonsense": Value(value=1, unit="x")}}, "unknown metric"),
        ({"values": {"systolic": Value(value=4000, unit="mm[Hg]")}}, "outside"),
        ({"values": {}}, "measurement_unsuccessful"),
        ({"flags": ["made_up"]}, "unknown flag"),
        ({"id": "not-hex"}, "id"),
        ({"device_time": datetime(2026, 1, 1, tzinfo=UTC)}, "naive"),
        ({"body_site": "Mouth; DROP TABLE"}, "body_site"),
    ],
)
def test_malformed_readings_are_rejected_with_a_clear_message(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        reading(**overrides)


def test_nan_and_wrong_version_are_rejected() -> None:
    good = Batch(gateway_id="gw-1", batch_id="b-1", sent_at=datetime.now(UTC), readings=[reading()])
    text = good.model_dump_json()
    with pytest.raises(ValidationError):
        Batch.model_validate_json(text.replace('"v":1', '"v":2'))
    with pytest.raises(ValidationError):
        Batch.model_validate_json(text.replace('"value":142.0', '"value":NaN'))
    with pytest.raises(ValidationError, match="gateway_id"):
        Batch(gateway_id="gw/1", batch_id="b", sent_at=datetime.now(UTC), readings=[reading()])


def test_ack_defaults_are_empty() -> None:
    ack = Ack(batch_id="b-1", accepted=["a"])
    assert ack.rejected == [] and ack.v == 1


def test_reading_id_is_deterministic_and_ignores_corrected_time() -> None:
    when = datetime(2026, 3, 14, 7, 5, 9)
    first = compute_reading_id("ble:x", "blood_pressure", 1, device_time=when, raw_values={"systolic": [142, "mm[Hg]"]})
    again = compute_reading_id("ble:x", "blood_pressure", 1, device_time=when, raw_values={"systolic": [142, "mm[Hg]"]})
    other_user = compute_reading_id(
        "ble:x", "blood_pressure", 2, device_time=when, raw_values={"systolic": [142, "mm[Hg]"]}
    )
    assert first == again != other_user
    by_sequence = compute_reading_id("ble:g", "glucose", None, sequence=18, device_time=when)
    assert by_sequence == compute_reading_id("ble:g", "glucose", None, sequence=18, device_time=None)
    with pytest.raises(ValueError, match="needs"):
        compute_reading_id("ble:x", "heart_rate", None)
