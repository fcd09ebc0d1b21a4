"""The sink every driver calls: one device record in; a reading in the outbox, or the record in the
device quarantine, out. Never an exception for a bad record.

A record the codec decoded can still be refused on the way to a contract reading: a value outside the
contract's limits, an "unsuccessful" weighing from a scale with no clock (nothing to identify it by),
a time whose conversion overflows, a unit the catalogue cannot convert. Raised into the driver, such a
refusal would end the session before the record is acknowledged, the device would send it again on
every retry, and every record after it would never arrive. So the intake quarantines it instead
(device, profile, bytes as hex, reason, position) in the outbox database and returns normally: the
driver moves past it exactly as past a stored reading. Frames the codec could not decode at all reach
the intake as :class:`~gateway.drivers.base.UnreadableRecord` and are quarantined the same way.

What still raises is the outbox failing to take a good reading (full with ``refuse_new``, a broken
disk): then the record must stay on the device, so the driver must not move on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo
from enum import StrEnum

from pydantic import ValidationError

from gateway.codecs.common import Measurement
from gateway.contract import Reading
from gateway.drivers.base import ClockCheck, DeviceInfo, DeviceRecord, UnreadableRecord, gateway_now
from gateway.readings.normalise import to_reading
from gateway.store.outbox import Outbox, QuarantinedRecord

log = logging.getLogger(__name__)

# What building a contract reading from a decoded measurement raises when the record is bad: pydantic's
# ValidationError and the catalogue's UnknownUnitError are ValueErrors; datetime arithmetic on an
# extreme device time raises OverflowError; an unknown metric name a KeyError.
RECORD_REFUSALS: tuple[type[Exception], ...] = (ValueError, TypeError, ArithmeticError, KeyError)
MAX_REASON = 500


class RecordOutcome(StrEnum):
    STORED = "stored"
    """A new reading is in the outbox."""
    KNOWN = "known"
    """The reading was already in the outbox (or delivered): the same record read again."""
    QUARANTINED = "quarantined"
    """The record could not become a reading; it is in the device quarantine now."""
    KNOWN_QUARANTINED = "known_quarantined"
    """The same bad record was quarantined before (a device re-sending its memory)."""

    @property
    def quarantined(self) -> bool:
        return self in (RecordOutcome.QUARANTINED, RecordOutcome.KNOWN_QUARANTINED)


class RecordIntake:
    """The :class:`~gateway.drivers.base.MeasurementSink`: returns once the record is durable, as a
    reading or in quarantine. ``submit`` stores a reading (default: ``outbox.put`` on a thread)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        local_tz: tzinfo | None = None,
        now: Callable[[], datetime] = gateway_now,
        submit: Callable[[Reading], Awaitable[bool]] | None = None,
    ) -> None:
        self.outbox = outbox
        self.local_tz = local_tz
        self.now = now
        self._submit = submit or self._put

    async def __call__(self, device: DeviceInfo, record: DeviceRecord, clock: ClockCheck | None) -> RecordOutcome:
        outcome, _ = await self.take(device, record, clock)
        return outcome

    async def take(
        self, device: DeviceInfo, record: DeviceRecord, clock: ClockCheck | None
    ) -> tuple[RecordOutcome, Reading | None]:
        """Commit one record; return what became of it and the reading where there is one."""
        if isinstance(record, UnreadableRecord):
            entry = QuarantinedRecord(device.uid, record.profile or device.profile, record.raw.hex(),
                                      _one_line(record.reason), _text(record.position))
            return await self._quarantine(entry), None
        try:
            reading = to_reading(device, record, clock, self.now(), local_tz=self.local_tz)
        except RECORD_REFUSALS as err:
            return await self._quarantine(_refused(device, record, err)), None
        added = await self._submit(reading)
        return (RecordOutcome.STORED if added else RecordOutcome.KNOWN), reading

    async def _quarantine(self, entry: QuarantinedRecord) -> RecordOutcome:
        new = await asyncio.to_thread(self.outbox.quarantine_record, entry)
        where = f" {entry.position}" if entry.position is not None else ""
        if new:
            log.warning("%s: record%s quarantined, not a reading (%s): %s; raw %s", entry.device_uid, where,
                        entry.profile, entry.reason, _short(entry.raw))
            return RecordOutcome.QUARANTINED
        log.info("%s: record%s was quarantined before (%s); moving past it", entry.device_uid, where, entry.profile)
        return RecordOutcome.KNOWN_QUARANTINED

    async def _put(self, reading: Reading) -> bool:
        return await asyncio.to_thread(self.outbox.put, reading)


def _refused(device: DeviceInfo, measurement: Measurement, err: Exception) -> QuarantinedRecord:
    position = _record_position(measurement)
    if not measurement.raw:
        # No bytes to tell two records apart (a gateway-built window): the record's own identity does.
        position = position if position is not None else _identity(measurement)
    return QuarantinedRecord(device.uid, measurement.profile or device.profile, measurement.raw.hex(),
                             _reason(err), _text(position))


def _record_position(measurement: Measurement) -> int | str | None:
    if measurement.sequence is not None:
        return measurement.sequence
    for key in ("record_index", "record_number"):
        value = measurement.details.get(key)
        if value is not None:
            return value
    return None


def _identity(measurement: Measurement) -> str:
    when = measurement.device_time.isoformat() if measurement.device_time else measurement.details.get("window_start")
    values = ",".join(f"{name}={q.value}{q.unit}" for name, q in sorted(measurement.values.items()))
    return f"{measurement.kind}@{when}:{values}"


def _reason(err: Exception) -> str:
    if isinstance(err, ValidationError):
        parts = []
        for item in err.errors():
            key = ".".join(str(p) for p in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"{key}: {message}" if key else message)
        return _one_line("contract refused it: " + "; ".join(parts))
    return _one_line(f"cannot be a reading: {type(err).__name__}: {err}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON]


def _text(position: int | str | None) -> str | None:
    return None if position is None else str(position)


def _short(raw_hex: str) -> str:
    return raw_hex if len(raw_hex) <= 96 else f"{raw_hex[:96]}... ({len(raw_hex) // 2} bytes)"
