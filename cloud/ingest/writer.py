"""The batch writer: many validated messages → one transaction → acks to send after the commit.

Per transaction: readings and observations are COPYed (binary) into temp staging tables, inserted
with ``ON CONFLICT (id) DO NOTHING`` (a replay is a no-op), patients resolved through
``device_assignments`` (unknown devices stay ``patient_id NULL``: the unassigned queue), the
registered in-transaction hooks (alerts, twin) run on the newly stored readings only, dead letters
are written, devices and gateways marked seen. Nothing is published here: the caller publishes the
returned acks and notifications after ``commit`` succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from cloud.hooks import Notification, StoredReading, run_in_transaction_hooks
from cloud.ingest import queries
from cloud.ingest.validation import DeadLetter, StatusUpdate, ValidatedBatch
from gateway.contract import Ack, Reading, Rejection

SEEN_REFRESH_S = 10.0
"""A worker refreshes a device's or gateway's last_seen at most this often: those rows are hot, and
every refresh holds their row lock until commit, serialising workers that share a gateway."""


@dataclass(slots=True)
class WriteResult:
    acks: list[tuple[str, Ack]] = field(default_factory=list)
    """(gateway id, ack) per message that can be answered, in message order."""
    notifications: list[Notification] = field(default_factory=list)
    stored: int = 0
    """Readings stored for the first time by this transaction."""
    duplicates: int = 0
    """Valid readings not stored by this transaction because already stored (replays, also within
    the group), confirmed again in the acks."""
    dead_letters: int = 0


class BatchWriter:
    def __init__(self, late_after_s: float) -> None:
        self.late_after = timedelta(seconds=late_after_s)
        self._seen_devices: dict[str, float] = {}
        self._seen_gateways: dict[str, float] = {}

    def write(self, conn: psycopg.Connection, batches: Sequence[ValidatedBatch], received_at: datetime,
              statuses: Sequence[StatusUpdate] = ()) -> WriteResult:
        """Store ``batches`` in one transaction on ``conn`` (not autocommit) and commit it."""
        result = WriteResult()
        unique: dict[str, tuple[Reading, str, str]] = {}
        for batch in batches:
            for reading in batch.readings:
                if reading.id not in unique and batch.ack_gateway and batch.batch_id:
                    unique[reading.id] = (reading, batch.ack_gateway, batch.batch_id)
        dead = [d for batch in batches for d in batch.dead_letters]
        touched_now = time.monotonic()
        try:
            with conn.cursor() as cur:
                new_rows: list[tuple[str, str | None]] = []
                if unique:
                    new_rows = self._store(cur, unique, received_at)
                new_ids = {row[0] for row in new_rows}
                stored = [StoredReading(unique[rid][0], patient_id, unique[rid][1],
                                        self._is_late(unique[rid][0], received_at))
                          for rid, patient_id in sorted(new_rows)]
                result.notifications = run_in_transaction_hooks(conn, stored)
                if dead:
                    cur.executemany(queries.INSERT_DEAD_LETTERS, [
                        (d.topic, d.gateway_id, d.batch_id, d.reading_id, d.reason, d.payload) for d in dead])
                for status in statuses:
                    cur.execute(queries.UPSERT_GATEWAY_STATUS,
                                (status.gateway_id, received_at, Jsonb(status.status.model_dump(mode="json"))))
                self._mark_seen(cur, unique.values(), received_at, touched_now)
            conn.commit()
        except BaseException:
            conn.rollback()
            conn._rpm_staging_ready = False  # type: ignore[attr-defined]  # created in the rolled-back transaction
            # What this transaction claimed to refresh was rolled back too.
            self._forget(unique.values(), touched_now)
            raise
        result.stored = len(new_ids)
        result.duplicates = sum(len(b.readings) for b in batches if b.ack_gateway and b.batch_id) - len(new_ids)
        result.dead_letters = len(dead)
        for batch in batches:
            if batch.ack_gateway and batch.batch_id:
                # Built from already validated parts: construct without validating again (a per-message cost).
                result.acks.append((batch.ack_gateway, Ack.model_construct(
                    batch_id=batch.batch_id, accepted=[r.id for r in batch.readings], rejected=batch.rejected)))
        return result

    def _is_late(self, reading: Reading, received_at: datetime) -> bool:
        return received_at - reading.measured_at > self.late_after

    def _store(self, cur: psycopg.Cursor, unique: dict[str, tuple[Reading, str, str]],
               received_at: datetime) -> list[tuple[str, str | None]]:
        # Temp tables live as long as the session: create them once per pooled connection.
        if not getattr(cur.connection, "_rpm_staging_ready", False):
            cur.execute(queries.CREATE_STAGING)
            cur.connection._rpm_staging_ready = True  # type: ignore[attr-defined]
        with cur.copy(queries.COPY_READINGS) as copy:
            copy.set_types(queries.READING_TYPES)
            for reading, gateway_id, batch_id in unique.values():
                copy.write_row((
                    reading.id, reading.device.uid, reading.user_index, gateway_id, batch_id, str(reading.kind),
                    reading.measured_at, reading.received_at, reading.device_time, str(reading.clock.judgement),
                    reading.clock.offset_s, reading.sequence, reading.flags, self._is_late(reading, received_at),
                    reading.raw,
                ))
        with cur.copy(queries.COPY_OBSERVATIONS) as copy:
            copy.set_types(queries.OBSERVATION_TYPES)
            for reading, _, _ in unique.values():
                for metric, value in reading.values.items():
                    is_list = isinstance(value.value, list)
                    original = value.original_value
                    copy.write_row((
                        reading.id, str(reading.kind), metric, reading.measured_at,
                        None if is_list else value.value, value.value if is_list else None, value.unit,
                        original if not isinstance(original, list) else None, value.original_unit, reading.flags,
                    ))
        cur.execute(queries.INSERT_NEW)
        return [(row[0], row[1]) for row in cur.fetchall()]

    def _mark_seen(self, cur: psycopg.Cursor, items: Iterable[tuple[Reading, str, str]],
                   received_at: datetime, now: float) -> None:
        devices: dict[str, tuple[Reading, str]] = {}
        gateways: set[str] = set()
        for reading, gateway_id, _ in items:
            uid = reading.device.uid
            if now - self._seen_devices.get(uid, -SEEN_REFRESH_S) >= SEEN_REFRESH_S:
                devices[uid] = (reading, gateway_id)
            if now - self._seen_gateways.get(gateway_id, -SEEN_REFRESH_S) >= SEEN_REFRESH_S:
                gateways.add(gateway_id)
        if devices:
            rows = [devices[uid] for uid in sorted(devices)]
            cur.execute(queries.UPSERT_DEVICES, (
                [r.device.uid for r, _ in rows], [str(r.device.transport) for r, _ in rows],
                [r.device.profile for r, _ in rows], [r.device.model for r, _ in rows],
                [r.device.serial for r, _ in rows], [r.device.manufacturer for r, _ in rows],
                [g for _, g in rows], [received_at] * len(rows),
            ))
            self._seen_devices.update(dict.fromkeys(devices, now))
        if gateways:
            ordered = sorted(gateways)
            cur.execute(queries.UPSERT_GATEWAYS, (ordered, [received_at] * len(ordered)))
            self._seen_gateways.update(dict.fromkeys(gateways, now))

    def _forget(self, items: Iterable[tuple[Reading, str, str]], now: float) -> None:
        for reading, gateway_id, _ in items:
            if self._seen_devices.get(reading.device.uid) == now:
                del self._seen_devices[reading.device.uid]
            if self._seen_gateways.get(gateway_id) == now:
                del self._seen_gateways[gateway_id]


def as_store_failure(batch: ValidatedBatch, reason: str, payload: bytes) -> ValidatedBatch:
    """The message as a dead letter when the database refuses it (e.g. a NUL character in a string).

    Its readings are rejected in the ack (the sender quarantines them rather than resend forever) and
    the raw payload is kept with the reason.
    """
    failed = ValidatedBatch(batch.topic, batch.ack_gateway, batch.batch_id)
    failed.rejected = list(batch.rejected) + [Rejection(id=r.id, reason=reason) for r in batch.readings]
    failed.dead_letters = [DeadLetter(batch.topic, reason, payload, batch.ack_gateway, batch.batch_id)]
    return failed
