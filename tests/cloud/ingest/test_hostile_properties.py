"""Property tests: arbitrary JSON-ish documents, hostile strings and hostile timestamps through
``validate_message`` / ``validate_status`` (never raise), and through the real batch writer into
PostgreSQL (every reading of an answerable message ends up stored or rejected, never an error)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest.validation import DeadLetter, validate_message, validate_status
from cloud.ingest.writer import BatchWriter
from gateway.contract import compute_reading_id
from gateway.metrics import METRICS

GATEWAY = "gw-prop"
TOPIC = f"rpm/v1/gw/{GATEWAY}/readings"

HOSTILE_TEXT = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["\x00", "UA\x00651", "\ud800", "a\udfffb", "\x7f", "\x85", "\x1b[31m", "a" * 65, "a" * 5000,
                     "=HYPERLINK(\"x\")", "", " ", "ble:aa:01", "mm[Hg]", "kg", "lb", "\u202e", "😀"]),
)
HOSTILE_TIME = st.one_of(
    st.sampled_from(["0001-01-01T00:30:00+05:00", "9999-12-31T23:30:00-05:00", "0001-01-01T00:00:00Z",
                     "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00",
                     "2026-02-30T00:00:00Z", "not a time", "", 1e20, -1, 0, 2**63, None, True]),
    st.builds(lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
              st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
              st.integers(-1439, 1439)),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)
# Where a hostile value goes in an otherwise valid reading.
PATHS = [("device", "model"), ("device", "serial"), ("device", "manufacturer"), ("device", "uid"),
         ("device", "profile"), ("measured_at",), ("received_at",), ("device_time",), ("values", "systolic", "unit"),
         ("values", "systolic", "original_unit"), ("values", "systolic", "value"), ("flags",), ("id",),
         ("user_index",), ("sequence",), ("raw",), ("clock", "offset_s"), ("values", "\x00"), ("extra",)]


def valid_reading(n: int) -> dict[str, Any]:
    uid = f"ble:prop:{n % 3}"
    return {
        "id": compute_reading_id(uid, "blood_pressure", None, sequence=n), "kind": "blood_pressure",
        "device": {"uid": uid, "transport": "ble", "profile": "ble.blood_pressure", "model": "UA-651"},
        "measured_at": "2026-03-01T08:00:00Z", "received_at": "2026-03-01T08:00:05Z",
        "device_time": "2026-03-01T09:00:00",
        "clock": {"judgement": "device"}, "sequence": n, "raw": "1e80",
        "values": {"systolic": {"value": 120, "unit": METRICS["systolic"].unit},
                   "diastolic": {"value": 80, "unit": METRICS["diastolic"].unit}},
    }


def _put(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = document
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    target[path[-1]] = value


@st.composite
def hostile_batches(draw: st.DrawFn) -> dict[str, Any]:
    readings = []
    for _ in range(draw(st.integers(1, 4))):
        reading = valid_reading(draw(st.integers(0, 10_000)))
        for path in draw(st.lists(st.sampled_from(PATHS), max_size=3)):
            _put(reading, path, draw(st.one_of(HOSTILE_TEXT, HOSTILE_TIME, JSONISH)))
        readings.append(reading)
    document: dict[str, Any] = {"v": 1, "gateway_id": GATEWAY, "batch_id": f"b-{draw(st.integers(0, 10**9))}",
                                "sent_at": "2026-03-01T08:00:06Z", "readings": readings}
    if draw(st.booleans()):
        document[draw(st.sampled_from(["sent_at", "batch_id", "gateway_id", "v", "readings", "x"]))] = draw(
            st.one_of(HOSTILE_TIME, HOSTILE_TEXT, JSONISH))
    return document


def encode(document: Any) -> bytes:
    try:
        return json.dumps(document).encode()
    except (ValueError, RecursionError):
        return repr(document).encode("utf-8", "surrogatepass")


def _ids(document: Any) -> list[str]:
    readings = document.get("readings") if isinstance(document, dict) else None
    # Ids a gateway can have made (32 hex digits); anything else is answered by position ("#3").
    return [r["id"] for r in readings if isinstance(r, dict) and isinstance(r.get("id"), str)
            and re.fullmatch(r"[0-9a-f]{32}", r["id"])] if isinstance(readings, list) else []


def check_every_reading_judged(document: Any, payload: bytes) -> Any:
    result = validate_message(TOPIC, payload)  # must not raise
    judged = {r.id for r in result.readings} | {r.id for r in result.rejected}
    if result.batch_id is None:
        assert result.dead_letters, "a message that cannot be answered is dead-lettered"
    else:
        assert set(_ids(document)) <= judged, "every reading is accepted or rejected by id"
    for rejection in result.rejected:
        json.dumps(rejection.reason)  # an ack can always be serialised
        assert "\x00" not in rejection.reason
    return result



@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.one_of(hostile_batches(), JSONISH))
def test_validate_message_never_raises_and_judges_every_reading(document: Any) -> None:
    check_every_reading_judged(document, encode(document))


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.one_of(st.fixed_dictionaries({"v": st.just(1), "gateway_id": st.just(GATEWAY), "online": st.booleans(),
                                        "at": HOSTILE_TIME}), JSONISH), st.binary(max_size=20))
def test_validate_status_never_raises(document: Any, noise: bytes) -> None:
    for payload in (encode(document), noise):
        result = validate_status(f"rpm/v1/gw/{GATEWAY}/status", payload)
        if isinstance(result, DeadLetter):
            assert "\x00" not in result.reason


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=hostile_batches())
def test_every_validated_reading_is_stored_or_rejected_by_the_real_writer(database_url: str, document: Any) -> None:
    payload = encode(document)
    result = check_every_reading_judged(document, payload)
    writer = BatchWriter(late_after_s=6 * 3600)
    with psycopg.connect(database_url) as conn:
        written = writer.write(conn, [result], datetime.now(UTC))  # the database refuses nothing validated
        if result.batch_id is None:
            assert written.acks == []
            return
        [(_, ack)] = written.acks
        assert set(ack.accepted) | {r.id for r in ack.rejected} >= {r.id for r in result.readings}
        stored = {row[0] for row in conn.execute("SELECT id FROM readings WHERE id = ANY(%s)", (ack.accepted,))}
        assert stored == set(ack.accepted)
