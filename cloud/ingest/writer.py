"""The batch writer: many validated messages → one transaction → acks to send after the commit.

Per transaction: each reading's device binding is checked (``devices.bound_gateway_id``; an unbound
device is bound to the sending gateway on first contact, race-safe between workers); a reading for
a device bound to another gateway is refused as a *security event*. The rest are COPYed (binary)
into temp staging tables and inserted with ``ON CONFLICT (id) DO NOTHING``, patients resolved
through ``device_assignments`` (unknown devices stay ``patient_id NULL``: the unassigned queue).
Only ids the insert skipped get a second look: stored with the same content hash
(:func:`cloud.ingest.identity.content_sha`) they are a replay, acked as accepted; with another they
are an *id conflict*, refused (the stored row stays, the offered copy is kept in a dead letter and
the security event). The in-transaction effects (``cloud.effects``: twin, then alerts) run on the
newly stored readings only, dead letters and security events are written, devices and gateways marked seen.
Nothing is published here: the caller publishes the returned acks and notifications after
``commit`` succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cloud.alerts import technical as technical_alerts
from cloud.alerts.delivery import Notification
from cloud.db.readings import StoredReading
from cloud.effects import apply_new_readings
from cloud.ingest import queries
from cloud.ingest.identity import content_sha
from cloud.ingest.validation import DeadLetter, StatusUpdate, ValidatedBatch, printable
from gateway.contract import Ack, Reading, Rejection

SEEN_REFRESH_S = 10.0
"""A worker refreshes a device's or gateway's last_seen at most this often: those rows are hot, and
every refresh holds their row lock until commit, serialising workers that share a gateway."""

FOREIGN_DEVICE_REASON = "device {uid} is bound to another gateway: refused (security event)"
ID_CONFLICT_REASON = "id conflict: reading {id} is already stored with different content: refused (kept for review)"


@dataclass(slots=True)
class WriteResult:
    acks: list[tuple[str, Ack]] = field(default_factory=list)
    """(gateway id, ack) per message that can be answered, in message order."""
    notifications: list[Notification] = field(default_factory=list)
    stored: int = 0
    """Readings stored for the first time by this transaction."""
    duplicates: int = 0
    """Valid readings not stored by this transaction because already stored with the same content
    (replays, also within the group), confirmed again in the acks."""
    dead_letters: int = 0
    security_events: int = 0
    """Readings refused because their device is bound to another gateway, or their id is stored
    with other content (each also a dead letter)."""


@dataclass(slots=True)
class _Item:
    """One reading of an answerable message, where it came from, and its content hash."""

    reading: Reading
    gateway_id: str
    batch_id: str
    batch_index: int
    sha: str


@dataclass(slots=True)
class _Refusals:
    """Readings refused inside the transaction: the ack's rejections, dead letters, security events."""

    reasons: dict[tuple[int, str], str] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: list[tuple[str, str, str, str, dict[str, Any]]] = field(default_factory=list)

    def add(self, batch: ValidatedBatch, item: _Item, kind: str, reason: str, detail: dict[str, Any]) -> None:
        reading = item.reading
        self.reasons[(item.batch_index, reading.id)] = reason
        self.dead_letters.append(DeadLetter(batch.topic, reason, reading.model_dump_json().encode(), item.gateway_id,
                                            batch.batch_id, reading.id))
        self.events.append((kind, item.gateway_id, reading.device.uid, reading.id,
                            {**detail, "batch_id": batch.batch_id, "content_sha": item.sha}))


class BatchWriter:
    def __init__(self, late_after_s: float) -> None:
        self.late_after = timedelta(seconds=late_after_s)
        self._seen_devices: dict[str, float] = {}
        self._seen_gateways: dict[str, float] = {}

    def write(self, conn: psycopg.Connection, batches: Sequence[ValidatedBatch], received_at: datetime,
              statuses: Sequence[StatusUpdate] = ()) -> WriteResult:
        """Store ``batches`` in one transaction on ``conn`` (not autocommit) and commit it."""
        result = WriteResult()
        items = [_Item(reading, batch.ack_gateway, batch.batch_id, index, content_sha(reading))
                 for index, batch in enumerate(batches) if batch.ack_gateway and batch.batch_id
                 for reading in batch.readings]
        refusals = _Refusals()
        unique: dict[str, _Item] = {}
        new_ids: set[str] = set()
        touched_now = time.monotonic()
        try:
            with conn.cursor() as cur:
                new_rows: list[tuple[str, str | None]] = []
                if items:
                    bindings = self._bindings(cur, items, received_at)
                    for item in items:
                        bound = bindings.get(item.reading.device.uid)
                        if bound != item.gateway_id:
                            refusals.add(batches[item.batch_index], item, "foreign_device",
                                         FOREIGN_DEVICE_REASON.format(uid=item.reading.device.uid),
                                         {"bound_gateway_id": bound})
                        else:
                            unique.setdefault(item.reading.id, item)
                if unique:
                    new_rows = self._store(cur, unique, received_at)
                new_ids = {row[0] for row in new_rows}
                self._judge_ids(cur, batches, items, unique, new_ids, refusals)
                stored = [StoredReading(unique[rid].reading, patient_id, unique[rid].gateway_id,
                                        self._is_late(unique[rid].reading, received_at))
                          for rid, patient_id in sorted(new_rows)]
                result.notifications = apply_new_readings(conn, stored, datetime.now(UTC))
                dead = [d for batch in batches for d in batch.dead_letters] + refusals.dead_letters
                if dead:
                    cur.executemany(queries.INSERT_DEAD_LETTERS, [_dead_letter_row(d) for d in dead])
                if refusals.events:
                    cur.executemany(queries.INSERT_SECURITY_EVENTS, [
                        (received_at, kind, gateway_id, printable(uid), reading_id, Jsonb(_jsonable(detail)))
                        for kind, gateway_id, uid, reading_id, detail in refusals.events])
                for status in statuses:
                    cur.execute(queries.UPSERT_GATEWAY_STATUS,
                                (status.gateway_id, received_at, Jsonb(status.status.model_dump(mode="json"))))
                if statuses:
                    # Quarantined device records and full storage reach the care team as technical alerts.
                    result.notifications += technical_alerts.on_gateway_statuses(
                        conn, [(s.gateway_id, s.status) for s in statuses], received_at)
                seen = [i for i in unique.values() if (i.batch_index, i.reading.id) not in refusals.reasons]
                self._mark_seen(cur, seen, received_at, touched_now)
            conn.commit()
        except BaseException:
            conn.rollback()
            conn._rpm_staging_ready = False  # type: ignore[attr-defined]  # created in the rolled-back transaction
            # What this transaction claimed to refresh was rolled back too.
            self._forget(unique.values(), touched_now)
            raise
        result.stored = len(new_ids)
        result.duplicates = len(items) - len(refusals.reasons) - len(new_ids)
        result.dead_letters = len(dead)
        result.security_events = len(refusals.events)
        for index, batch in enumerate(batches):
            if batch.ack_gateway and batch.batch_id:
                accepted = [r.id for r in batch.readings if (index, r.id) not in refusals.reasons]
                rejected = list(batch.rejected)
                if len(accepted) < len(batch.readings):
                    rejected += [Rejection.model_construct(id=r.id, reason=refusals.reasons[(index, r.id)])
                                 for r in batch.readings if (index, r.id) in refusals.reasons]
                # Built from already validated parts: construct without validating again (a per-message cost).
                result.acks.append((batch.ack_gateway, Ack.model_construct(
                    batch_id=batch.batch_id, accepted=accepted, rejected=rejected)))
        return result

    def _bindings(self, cur: psycopg.Cursor, items: Sequence[_Item], received_at: datetime) -> dict[str, str | None]:
        """The gateway each device of ``items`` is bound to, binding unbound ones on first contact (to
        the gateway of their first reading in the group)."""
        uids = sorted({item.reading.device.uid for item in items})
        bindings: dict[str, str | None] = dict(cur.execute(queries.SELECT_BINDINGS, (uids,)).fetchall())
        unbound = {uid for uid in uids if bindings.get(uid) is None}
        if not unbound:
            return bindings
        first: dict[str, _Item] = {}
        for item in items:
            if item.reading.device.uid in unbound:
                first.setdefault(item.reading.device.uid, item)
        rows = [first[uid] for uid in sorted(first)]
        devices = [r.reading.device for r in rows]
        cur.execute(queries.BIND_DEVICES, (
            [d.uid for d in devices], [str(d.transport) for d in devices], [d.profile for d in devices],
            [d.model for d in devices], [d.serial for d in devices], [d.manufacturer for d in devices],
            [r.gateway_id for r in rows], [received_at] * len(rows)))
        bound_now = dict(cur.fetchall())
        bindings.update(bound_now)
        raced = sorted(unbound - bound_now.keys())
        if raced:
            bindings.update(cur.execute(queries.SELECT_BINDINGS, (raced,)).fetchall())
        return bindings

    def _judge_ids(self, cur: psycopg.Cursor, batches: Sequence[ValidatedBatch], items: Sequence[_Item],
                   unique: dict[str, _Item], new_ids: set[str], refusals: _Refusals) -> None:
        """Refuse every accepted reading whose id is stored (before, or by this transaction) with other
        content. The usual case (every id new, no id twice) costs no query and one pass."""
        stored: dict[str, tuple[str | None, dict[str, Any]]] = {}
        skipped = sorted(unique.keys() - new_ids)
        if skipped:
            for rid, sha, gateway_id, batch_id, uid in cur.execute(queries.SELECT_STORED_CONTENT, (skipped,)):
                stored[rid] = (sha, {"gateway_id": gateway_id, "batch_id": batch_id, "device_uid": uid,
                                     "content_sha": sha})
        for item in items:
            rid = item.reading.id
            if (item.batch_index, rid) in refusals.reasons:
                continue
            if rid in new_ids:
                first = unique[rid]
                if first is item or first.sha == item.sha:
                    continue
                known: tuple[str | None, dict[str, Any]] = (first.sha, {
                    "gateway_id": first.gateway_id, "batch_id": first.batch_id,
                    "device_uid": first.reading.device.uid, "content_sha": first.sha})
            else:
                known = stored.get(rid, (None, {}))
            # NULL: stored before content hashes existed; its replays are accepted as they always were.
            if known[0] is not None and known[0] != item.sha:
                refusals.add(batches[item.batch_index], item, "id_conflict", ID_CONFLICT_REASON.format(id=rid),
                             {"stored": known[1]})

    def _is_late(self, reading: Reading, received_at: datetime) -> bool:
        return received_at - reading.measured_at > self.late_after

    def _store(self, cur: psycopg.Cursor, unique: dict[str, _Item], received_at: datetime
               ) -> list[tuple[str, str | None]]:
        # Temp tables live as long as the session: create them once per pooled connection.
        if not getattr(cur.connection, "_rpm_staging_ready", False):
            cur.execute(queries.CREATE_STAGING)
            cur.connection._rpm_staging_ready = True  # type: ignore[attr-defined]
        with cur.copy(queries.COPY_READINGS) as copy:
            copy.set_types(queries.READING_TYPES)
            for item in unique.values():
                reading = item.reading
                copy.write_row((
                    reading.id, reading.device.uid, reading.user_index, item.gateway_id,
                    item.batch_id, str(reading.kind), reading.measured_at, reading.received_at,
                    reading.device_time, str(reading.clock.judgement), reading.clock.offset_s, reading.sequence,
                    reading.flags, self._is_late(reading, received_at), reading.raw, item.sha, reading.body_site,
                ))
        with cur.copy(queries.COPY_OBSERVATIONS) as copy:
            copy.set_types(queries.OBSERVATION_TYPES)
            for item in unique.values():
                reading = item.reading
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

    def _mark_seen(self, cur: psycopg.Cursor, items: Iterable[_Item], received_at: datetime, now: float) -> None:
        devices: dict[str, tuple[Reading, str]] = {}
        gateways: set[str] = set()
        for item in items:
            reading, gateway_id = item.reading, item.gateway_id
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

    def _forget(self, items: Iterable[_Item], now: float) -> None:
        for item in items:
            reading, gateway_id = item.reading, item.gateway_id
            if self._seen_devices.get(reading.device.uid) == now:
                del self._seen_devices[reading.device.uid]
            if self._seen_gateways.get(gateway_id) == now:
                del self._seen_gateways[gateway_id]


def _dead_letter_row(dead: DeadLetter) -> tuple[Any, ...]:
    # Every text column made printable: a dead letter that cannot be written would leave its message
    # unacknowledged, redelivered on every reconnect.
    return (printable(dead.topic), _printable_or_none(dead.gateway_id), _printable_or_none(dead.batch_id),
            _printable_or_none(dead.reading_id), printable(dead.reason), dead.payload)


def _printable_or_none(text: str | None) -> str | None:
    return None if text is None else printable(text, 200)


def _jsonable(value: Any) -> Any:
    # jsonb refuses \u0000 as text does.
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def as_store_failure(batch: ValidatedBatch, reason: str, payload: bytes) -> ValidatedBatch:
    """The message as a dead letter when the database refuses it (e.g. a NUL character in a string).

    Its readings are rejected in the ack (the sender quarantines them rather than resend forever) and
    the raw payload is kept with the reason.
    """
    reason = printable(reason)
    failed = ValidatedBatch(batch.topic, batch.ack_gateway, batch.batch_id)
    failed.rejected = list(batch.rejected) + [Rejection(id=r.id, reason=reason) for r in batch.readings]
    failed.dead_letters = [DeadLetter(batch.topic, reason, payload, batch.ack_gateway, batch.batch_id)]
    return failed
