"""Device → patient assignment on a real PostgreSQL, through the ingest batch writer: unknown devices
queue (stored, never dropped), assignment backfills from its start, windows and user indexes decide
which patient a reading belongs to, unassigning queues again."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.devices.assignment import (
    AssignmentError,
    add_arguments,
    assign_device,
    list_unassigned,
    main,
    unassign_device,
)
from cloud.ingest.validation import ValidatedBatch
from cloud.ingest.writer import BatchWriter
from gateway.contract import Reading, compute_reading_id
from gateway.metrics import METRICS

pytestmark = pytest.mark.integration
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def scale_reading(uid: str, at: datetime, kg: float, user_index: int | None = None) -> Reading:
    return Reading(id=compute_reading_id(uid, "body_weight", user_index, device_time=at.replace(tzinfo=None),
                                         raw_values={"kg": kg}),
                   device={"uid": uid, "transport": "ble", "profile": "ble.weight_scale"}, user_index=user_index,
                   kind="body_weight", measured_at=at, clock={"judgement": "device"},
                   values={"body_weight": {"value": kg, "unit": METRICS["body_weight"].unit}})


def store(conn: psycopg.Connection, readings: list[Reading], gateway_id: str = "gw-assign") -> None:
    batch = ValidatedBatch(f"rpm/v1/gw/{gateway_id}/readings", gateway_id, f"b-{readings[0].id[:8]}", readings)
    BatchWriter(late_after_s=6 * 3600).write(conn, [batch], T0 + timedelta(days=10))


def owner(conn: psycopg.Connection, reading: Reading) -> tuple[str | None, set[str | None]]:
    row = conn.execute("SELECT patient_id FROM readings WHERE id = %s", (reading.id,)).fetchone()
    observed = {r[0] for r in conn.execute("SELECT patient_id FROM observations WHERE reading_id = %s", (reading.id,))}
    assert row is not None
    return row[0], observed


@pytest.fixture
def conn(fresh_database_url: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(fresh_database_url) as connection:
        yield connection


def test_unknown_device_is_queued_then_assignment_backfills_from_its_start(conn) -> None:  # type: ignore[no-untyped-def]
    uid = "ble:scale:01"
    before, after = scale_reading(uid, T0 - timedelta(days=1), 80.0), scale_reading(uid, T0 + timedelta(hours=1), 80.4)
    store(conn, [before, after])
    assert owner(conn, before) == (None, {None}) and owner(conn, after) == (None, {None})
    [queued] = list_unassigned(conn)
    assert (queued["device_uid"], queued["readings"], queued["gateway_id"]) == (uid, 2, "gw-assign")

    result = assign_device(conn, uid, "pat-1", valid_from=T0, create_patient=True)
    assert (result.readings_backfilled, result.observations_backfilled) == (1, 1)
    assert owner(conn, before) == (None, {None}), "readings before the assignment stay unassigned"
    assert owner(conn, after) == ("pat-1", {"pat-1"})
    later = scale_reading(uid, T0 + timedelta(days=2), 80.9)
    store(conn, [later])
    assert owner(conn, later) == ("pat-1", {"pat-1"})
    assert [q["readings"] for q in list_unassigned(conn)] == [1]


def test_a_cuff_moving_between_patients_files_readings_by_measured_time(conn) -> None:  # type: ignore[no-untyped-def]
    uid = "ble:scale:02"
    assign_device(conn, uid, "pat-a", valid_from=T0, create_patient=True)
    result = assign_device(conn, uid, "pat-b", valid_from=T0 + timedelta(days=3), create_patient=True)
    assert result.closed == 1
    first, second = scale_reading(uid, T0 + timedelta(days=1), 70), scale_reading(uid, T0 + timedelta(days=4), 90)
    store(conn, [first, second])
    assert owner(conn, first)[0] == "pat-a" and owner(conn, second)[0] == "pat-b"

    unassign_device(conn, uid, at=T0 + timedelta(days=5))
    third = scale_reading(uid, T0 + timedelta(days=6), 91)
    store(conn, [third])
    assert owner(conn, third)[0] is None
    with pytest.raises(AssignmentError):
        unassign_device(conn, uid, at=T0 + timedelta(days=7))


def test_user_specific_assignment_wins_over_the_whole_device(conn) -> None:  # type: ignore[no-untyped-def]
    uid = "ble:scale:03"
    assign_device(conn, uid, "pat-household", create_patient=True, valid_from=T0)
    assign_device(conn, uid, "pat-user2", user_index=2, create_patient=True, valid_from=T0)
    one, two = scale_reading(uid, T0 + timedelta(hours=1), 60, 1), scale_reading(uid, T0 + timedelta(hours=1), 95, 2)
    store(conn, [one, two])
    assert owner(conn, one)[0] == "pat-household" and owner(conn, two)[0] == "pat-user2"


def test_late_readings_are_marked_late(conn) -> None:  # type: ignore[no-untyped-def]
    old, fresh = scale_reading("ble:scale:04", T0, 70), scale_reading("ble:scale:04", T0 + timedelta(days=10), 71)
    store(conn, [old, fresh])  # received at T0 + 10 days
    late = dict(conn.execute("SELECT id, late FROM readings WHERE device_uid = 'ble:scale:04'").fetchall())
    assert late == {old.id: True, fresh.id: False}


def test_cli_refuses_an_unknown_patient_and_creates_one_when_asked(fresh_database_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["ble:scale:05", "pat-cli", "--database-url", fresh_database_url]
    assert main(parser.parse_args(base)) == 2
    assert "no patient" in capsys.readouterr().out
    assert main(parser.parse_args([*base, "--create-patient", "--from", "2026-05-01T00:00:00"])) == 0
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute("SELECT patient_id, valid_from FROM device_assignments WHERE device_uid = 'ble:scale:05'"
                           ).fetchone()
    assert row == ("pat-cli", datetime(2026, 5, 1, tzinfo=UTC))
    assert main(parser.parse_args(["--list", "--database-url", fresh_database_url])) == 0


def test_cli_batch_makes_every_assignment_or_none(fresh_database_url: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    good = [{"device_uid": f"ble:batch:{i}", "patient_id": f"pat-batch-{i}", "valid_from": "2026-05-01T00:00:00",
             "create_patient": True, "name": f"Batch {i}"} for i in range(2)]
    refused = tmp_path / "refused.jsonl"
    refused.write_text("\n".join(json.dumps(line) for line in
                                 [*good, {"device_uid": "ble:batch:x", "patient_id": "pat-nobody"}]) + "\n")
    assert main(parser.parse_args(["--batch", str(refused), "--database-url", fresh_database_url])) == 2
    assert "assignment 3 (ble:batch:x): no patient 'pat-nobody'" in capsys.readouterr().out
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"device_uid": "ble:batch:y"}\n')
    assert main(parser.parse_args(["--batch", str(malformed), "--database-url", fresh_database_url])) == 2
    assert "line 1: patient_id" in capsys.readouterr().out

    def assigned() -> list[tuple[str, str, datetime]]:
        with psycopg.connect(fresh_database_url) as conn:
            return conn.execute("SELECT device_uid, patient_id, valid_from FROM device_assignments"
                                " WHERE device_uid LIKE 'ble:batch:%%' ORDER BY 1").fetchall()

    assert assigned() == [], "a failing line leaves the whole batch unmade"
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in good) + "\n\n")
    assert main(parser.parse_args(["--batch", str(batch), "--database-url", fresh_database_url])) == 0
    assert "2 assignment(s) made" in capsys.readouterr().out
    start = datetime(2026, 5, 1, tzinfo=UTC)
    assert assigned() == [("ble:batch:0", "pat-batch-0", start), ("ble:batch:1", "pat-batch-1", start)]
    with psycopg.connect(fresh_database_url) as conn:
        audited = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'rpm-cloud assign'").fetchone()
    assert audited == (2,)
