"""Storage benchmarks (``-m bench``) on whichever backend the harness gives (plain PostgreSQL or
TimescaleDB; point ``RPM_TEST_DATABASE_URL`` at each to compare):

- what keeping the day statistics costs ingest: COPY of a year of 5-minute glucose into ``observations``
  with the day-stale triggers enabled and disabled (statement triggers with transition tables on plain
  PostgreSQL, row triggers on a hypertable: migrations 0420, 0090, 0425);
- on TimescaleDB, the compression ratio this schema gets (``hypertable_compression_stats``) for a
  continuous glucose monitor (288 values a day, one patient) and for home blood pressure (4 readings a
  day, three values each, 1 000 patients), in bytes per observation row before and after.

- bytes on disk per home blood-pressure reading stored through the writer's path with its effects, per
  table and index (readings, observations, twin events, day statistics, programme days), and on TimescaleDB
  with the observations compressed (issue 21's figure).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.conftest import _own_database

pytestmark = pytest.mark.bench
YEAR_OF_5_MINUTES = 365 * 288
BP_PATIENTS, BP_DAYS, BP_PER_DAY = 1000, 56, 4
END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def db(pg_admin_url: str, _migrated_template: str) -> Iterator[str]:
    with _own_database(pg_admin_url, _migrated_template) as url:
        yield url


def _hypertable(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    return conn.execute("SELECT 1 FROM timescaledb_information.hypertables"
                        " WHERE hypertable_name = 'observations'").fetchone() is not None


def _copy_glucose(conn: psycopg.Connection, patient: str) -> float:
    start = END - timedelta(days=365)
    began = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY observations (reading_id, patient_id, kind, metric, measured_at, value, unit)"
                      " FROM STDIN") as copy_in:
            for i in range(YEAR_OF_5_MINUTES):
                copy_in.write_row((f"{patient}-{i}", patient, "glucose", "glucose",
                                   start + timedelta(minutes=5 * i), 150 + 70 * ((i % 288) - 144) / 144, "mg/dL"))
    return time.perf_counter() - began


def _day_triggers(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'observations'::regclass"
                                       " AND tgname LIKE 'observations_day_stale_%' AND NOT tgisinternal")]


def test_day_statistics_triggers_cost_on_ingest(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        backend = "TimescaleDB (row triggers)" if _hypertable(conn) else "plain PostgreSQL (statement triggers)"
        triggers = _day_triggers(conn)
        assert triggers, "the day-stale triggers exist on this backend"
        with_triggers = _copy_glucose(conn, "bench-trig-on")
        stale = conn.execute("SELECT count(*) FROM observation_day_stale WHERE patient_id = 'bench-trig-on'"
                             ).fetchone()[0]
        assert stale in (365, 366)  # every UTC day the year touches, once
        for name in triggers:
            conn.execute(f"ALTER TABLE observations DISABLE TRIGGER {name}")
        try:
            without = _copy_glucose(conn, "bench-trig-off")
        finally:
            for name in triggers:
                conn.execute(f"ALTER TABLE observations ENABLE TRIGGER {name}")
    print(f"\n{backend}: COPY {YEAR_OF_5_MINUTES} glucose values: {with_triggers:.2f} s with the day-stale triggers,"
          f" {without:.2f} s without ({(with_triggers / without - 1) * 100:+.0f} %,"
          f" {(with_triggers - without) / YEAR_OF_5_MINUTES * 1e6:.1f} us per row)")


def _compression(conn: psycopg.Connection, patients: list[str]) -> tuple[int, int, int]:
    """Compress the chunks holding these patients' rows; bytes before and after, and the rows."""
    conn.execute("SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('observations') c")
    rows = conn.execute("SELECT count(*) FROM observations WHERE patient_id = ANY(%s)", (patients,)).fetchone()[0]
    stats = conn.execute("SELECT sum(before_compression_total_bytes), sum(after_compression_total_bytes)"
                         " FROM chunk_compression_stats('observations')").fetchone()
    return int(stats[0]), int(stats[1]), int(rows)


def test_compression_ratio_of_this_schema(pg_admin_url: str, _migrated_template: str) -> None:
    with _own_database(pg_admin_url, _migrated_template) as url, psycopg.connect(url, autocommit=True) as conn:
        if not _hypertable(conn):
            pytest.skip("observations is no hypertable here (no TimescaleDB): nothing is compressed")
        _copy_glucose(conn, "bench-cgm")
        before, after, rows = _compression(conn, ["bench-cgm"])
        print(f"\nCGM, 1 patient x 1 year x 288/day: {rows} rows, {before / rows:.0f} -> {after / rows:.1f} bytes per"
              f" observation row ({before / after:.1f}x; {before / 2**20:.1f} -> {after / 2**20:.2f} MiB)")
        cgm_ratio = before / after
    with _own_database(pg_admin_url, _migrated_template) as url, psycopg.connect(url, autocommit=True) as conn:
        start = END - timedelta(days=BP_DAYS)
        patients = [f"bench-bp-{p:04d}" for p in range(BP_PATIENTS)]
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY observations (reading_id, patient_id, kind, metric, measured_at, value, unit)"
                          " FROM STDIN") as copy_in:
                for p, patient in enumerate(patients):
                    for k in range(BP_DAYS * BP_PER_DAY):
                        at = start + timedelta(hours=24 / BP_PER_DAY * k, minutes=p % 60)
                        reading = f"{patient}-{k}"
                        for metric, value, unit in (("systolic", 120 + (k * 7 + p) % 40, "mm[Hg]"),
                                                    ("diastolic", 75 + (k * 3 + p) % 20, "mm[Hg]"),
                                                    ("pulse_rate", 60 + (k * 5 + p) % 30, "/min")):
                            copy_in.write_row((reading, patient, "blood_pressure", metric, at, value, unit))
        before, after, rows = _compression(conn, patients)
        print(f"blood pressure, {BP_PATIENTS} patients x {BP_DAYS} days x {BP_PER_DAY}/day x 3 values: {rows} rows,"
              f" {before / rows:.0f} -> {after / rows:.1f} bytes per observation row ({before / after:.1f}x)")
        assert before > after and cgm_ratio > 1


# What holds a reading once ingest stored it: its row and frame, its values, the twin event it made, the
# day statistics and the programme's days with data (per-reading tables); twins and the panel are per patient.
PER_READING_TABLES = ("readings", "observations", "twin_events", "observation_day_stats", "observation_day_stale",
                      "programme_device_days")
BYTES_PATIENTS, BYTES_DAYS, BYTES_PER_DAY = 40, 28, 4


def _relation_bytes(conn: psycopg.Connection, table: str) -> list[tuple[str, int]]:
    """(part, bytes) of a table: its heap, its TOAST and each index (a hypertable's summed over its chunks)."""
    if table == "observations" and _hypertable(conn):
        detail = conn.execute("SELECT table_bytes, toast_bytes, index_bytes FROM hypertable_detailed_size(%s)",
                              (table,)).fetchone()
        return [("heap", int(detail[0] or 0)), ("toast", int(detail[1] or 0)), ("indexes", int(detail[2] or 0))]
    parts = [("heap", conn.execute("SELECT pg_relation_size(%s::regclass)", (table,)).fetchone()[0]),
             ("toast", conn.execute("SELECT coalesce(pg_total_relation_size(reltoastrelid), 0) FROM pg_class"
                                    " WHERE oid = %s::regclass", (table,)).fetchone()[0])]
    parts += conn.execute("SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) FROM pg_index i"
                          " WHERE i.indrelid = %s::regclass ORDER BY 1", (table,)).fetchall()
    return [(name, int(size)) for name, size in parts]


def test_bytes_per_blood_pressure_reading(pg_admin_url: str, _migrated_template: str) -> None:
    """Issue 21's figure: bytes on disk per home blood-pressure reading (systolic, diastolic, mean, pulse)
    stored through the writer's own path with the twin and alert effects, per table and index; on
    TimescaleDB also with the observations' chunks compressed. Printed, not asserted (the goals, <= 400
    and <= 50 bytes, belong to a schema change that is not made yet)."""
    from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest

    start = END - timedelta(days=BYTES_DAYS)
    with _own_database(pg_admin_url, _migrated_template) as url, psycopg.connect(url, autocommit=True) as conn:
        for p in range(BYTES_PATIENTS):
            patient = f"bench-bytes-{p:03d}"
            cuff = add_patient(conn, patient)["blood_pressure"]
            readings = [bp(cuff, start + timedelta(hours=24 / BYTES_PER_DAY * k, minutes=p), 120 + (k * 7 + p) % 40,
                           75 + (k * 3 + p) % 20, 60 + (k * 5 + p) % 30) for k in range(BYTES_DAYS * BYTES_PER_DAY)]
            for first in range(0, len(readings), 50):  # ingest's groups
                ingest(conn, readings[first:first + 50], patient)
        stored = conn.execute("SELECT count(*) FROM readings WHERE patient_id LIKE 'bench-bytes-%'").fetchone()[0]
        assert stored == BYTES_PATIENTS * BYTES_DAYS * BYTES_PER_DAY
        for table in PER_READING_TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        lines, total = [], 0.0
        for table in PER_READING_TABLES:
            parts = _relation_bytes(conn, table)  # an empty table's pages included: a few KiB in all
            size = sum(b for _, b in parts)
            total += size / stored
            detail = ", ".join(f"{name} {b / stored:.0f}" for name, b in parts if b)
            lines.append(f"  {table}: {size / stored:.0f} bytes per reading ({detail})")
        backend = "TimescaleDB" if _hypertable(conn) else "plain PostgreSQL"
        print(f"\n{backend}: {stored} blood-pressure readings, {total:.0f} bytes per reading in all\n"
              + "\n".join(lines))
        if _hypertable(conn):
            compressed_before, compressed_after, rows = _compression(conn, [f"bench-bytes-{p:03d}"
                                                                            for p in range(BYTES_PATIENTS)])
            readings_bytes = sum(b for _, b in _relation_bytes(conn, "readings"))
            print(f"  observations compressed: {compressed_before / stored:.0f} -> {compressed_after / stored:.0f}"
                  f" bytes per reading ({compressed_before / compressed_after:.1f}x, {rows} rows); readings (not a"
                  f" hypertable, uncompressed) still {readings_bytes / stored:.0f}")
        assert total > 0
