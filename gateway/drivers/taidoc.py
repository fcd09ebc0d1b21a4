"""TaiDoc (FORA) BP monitors and 2-in-1 glucose/BP meters over a USB serial bridge (19200 8N1).

Session: wake, model (selects the record layouts), serial number (two halves: the uid becomes
``usb:<vid>:<pid>:<serial>``), device clock (a ClockCheck, as the other drivers do), number of stored
records, then each new record's time and value, power off if the model wants it.

Incremental download. The meters have no sequence numbers and index 0 is always the newest record,
so every new measurement shifts the older ones up. The driver remembers, per device, an *anchor*:
the fingerprints (time and value bytes) of the newest committed record and the one before it, with
its index and the record count when it was committed. Next session the anchor is expected at
``index + (count now - count then)``; where it is found there, only the records above it are new and
they are downloaded oldest first, each committed through the sink before the anchor moves onto it, so a
cable pulled mid-download resumes at the first record not yet committed (a record that cannot become a
reading is committed to the device quarantine, and the anchor moves past it all the same).

Under the gateway's runtime (``state.follows_acks``) a session resumes from the anchor of the last
record the *cloud* acknowledged, not of the last one stored: each committed record gets a position (the
gateway's count of this device's records, :data:`RECORD_ORDINAL_KEY`), its anchor is kept as that
position's mark, and the acked position follows the cloud's acks
(:class:`~gateway.store.acked_positions.AckedPositions`). A reading the outbox lost before its ack (a cap, a
damaged file) is then read from the meter again. Where it is not found there
(memory full and wrapped, or cleared), the driver scans from the newest record down until it meets the
anchor; where it never does, the memory was cleared (or replaced) and every record on it is new. A
record read twice still has the same reading id (device time and raw values), so the outbox and the
cloud drop any doubles a lost state file could cause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import datetime
from typing import Any, ClassVar

from gateway.codecs.common import ChecksumError, DecodeError
from gateway.codecs.taidoc import (
    WAKE_REPLIES,
    Command,
    Frame,
    FrameAssembler,
    ModelProfile,
    RecordTime,
    UnknownModelError,
    decode_clock,
    decode_model,
    decode_record,
    decode_record_count,
    decode_record_time,
    decode_serial_half,
    model_profile,
    power_off_request,
    read_clock_request,
    read_model_request,
    record_count_request,
    record_kind,
    record_time_request,
    record_value_request,
    serial_former_request,
    serial_latter_request,
    wake_request,
    write_clock_request,
)
from gateway.drivers.base import (
    CLOCK_TOLERANCE,
    EARLIEST_PLAUSIBLE,
    ClockCheck,
    DeviceTimeoutError,
    SessionResult,
    gateway_now,
    undecodable,
)
from gateway.drivers.device_state import ACKED_SEQUENCE_KEY, RECORD_ORDINAL_KEY
from gateway.drivers.serial_port import ProtocolError, SerialDriver, SerialLink

log = logging.getLogger(__name__)

ANCHOR_KEY = "taidoc.anchor"
ANCHOR_LENGTH = 2


class UnsupportedModelError(ProtocolError):
    """The device reported a model this driver has no record layout for; nothing was read from it."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoredRecord:
    index: int
    time_frame: Frame
    value_frame: Frame

    @property
    def fingerprint(self) -> str:
        return (self.time_frame.data + self.value_frame.data).hex()


class TaidocDriver(SerialDriver):
    """Options: ``reply_timeout_s`` (1.0), ``retries`` per request (2), ``set_clock`` (true: write the
    gateway's time after the download when the device clock is off by more than the tolerance),
    ``power_off`` (default: what the model wants)."""

    # The session reads the serial number and calls identify(), so status is kept under that uid.
    identifies_itself = True

    profile: ClassVar[str] = "serial.taidoc"
    default_baudrate: ClassVar[int] = 19200

    async def session(self, link: SerialLink) -> SessionResult:
        self._link = link
        self._assembler = FrameAssembler()
        self._noise = 0
        self.reply_timeout_s = float(self.options.get("reply_timeout_s", 1.0))
        self.retries = int(self.options.get("retries", 2))
        notes: list[str] = []

        await self._wake()
        model = decode_model(await self._ask(read_model_request(), Command.READ_MODEL))
        try:
            profile = model_profile(model)
        except UnknownModelError as err:
            raise UnsupportedModelError(f"{self.port_path}: {err}") from err
        former = decode_serial_half(await self._ask(serial_former_request(), Command.SERIAL_FORMER))
        latter = decode_serial_half(await self._ask(serial_latter_request(), Command.SERIAL_LATTER))
        self.identify(former + latter, model=profile.model)
        self.device = dataclasses.replace(self.device, profile=self.profile, manufacturer="TaiDoc")

        clock = await self._read_clock()
        count = decode_record_count(await self._ask(record_count_request(), Command.RECORD_COUNT))
        committed = await self._download(profile, count, clock, notes)

        if self._wants_clock_set(clock):
            clock = await self._set_clock(clock)
            judged = "unset" if clock.unset or clock.offset is None else f"off by {clock.offset}"
            notes.append(f"device clock was {judged}; set to the gateway's time after the download")
        if self._noise:
            notes.append(f"{self._noise} bad or stray frame(s) from the device were skipped or retried")
        power_off = self.options.get("power_off")
        if power_off if power_off is not None else profile.power_off:
            # No reply comes: the device switches off.
            await link.write(power_off_request())
        return SessionResult(measurements=committed, clock=clock, notes=notes)

    # --- requests ---------------------------------------------------------------------------------

    async def _ask(self, request: bytes, command: int, *, accept: frozenset[int] | None = None) -> Frame:
        """Send one request and return the device's reply to it; retry on silence or a bad frame."""
        wanted = accept or frozenset({command})
        last: Exception | None = None
        for _attempt in range(self.retries + 1):
            self._link.discard_input()
            self._assembler = FrameAssembler()
            await self._link.write(request)
            try:
                return await self._reply(wanted)
            except (DeviceTimeoutError, ChecksumError) as err:
                last = err
                self._noise += isinstance(err, ChecksumError)
                log.debug("%s: request 0x%02X: %s; retrying", self.port_path, command, err)
        if isinstance(last, DeviceTimeoutError):
            raise DeviceTimeoutError(
                f"{self.port_path}: no reply to request 0x{command:02X} after {self.retries + 1} tries"
            ) from last
        raise ProtocolError(f"{self.port_path}: request 0x{command:02X}: {last}") from last

    async def _reply(self, wanted: frozenset[int]) -> Frame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout_s
        while True:
            # One deadline for the whole reply, so a trickle of noise cannot hold the session forever.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeviceTimeoutError(f"{self.port_path}: no valid reply within {self.reply_timeout_s} s")
            chunk = await self._link.read_some(remaining)
            for item in self._assembler.feed(chunk):
                if isinstance(item, ChecksumError):
                    raise item
                if isinstance(item, DecodeError):
                    self._noise += 1
                    continue
                if item.from_device and item.command in wanted:
                    return item
                self._noise += 1  # a stale reply to an earlier try, or an echo

    async def _wake(self) -> None:
        # A sleeping meter may miss the first wake; _ask retries it.
        await self._ask(wake_request(), Command.WAKE, accept=WAKE_REPLIES)

    async def _read_clock(self) -> ClockCheck:
        now = gateway_now()
        try:
            device_now = decode_clock(await self._ask(read_clock_request(), Command.READ_CLOCK))
        except DecodeError as err:
            # A clock that does not decode (month 0 after a battery change) is an unset clock.
            log.info("%s: device clock unreadable: %s", self.port_path, err)
            return ClockCheck(gateway_now=now, device_now=None, unset=True)
        return ClockCheck(gateway_now=now, device_now=device_now, unset=device_now < EARLIEST_PLAUSIBLE)

    def _wants_clock_set(self, clock: ClockCheck) -> bool:
        if not self.options.get("set_clock", True):
            return False
        if clock.unset or clock.device_now is None:
            return True
        local_now = clock.gateway_now.astimezone(self.local_tz).replace(tzinfo=None)
        return abs(clock.device_now - local_now) > CLOCK_TOLERANCE

    async def _set_clock(self, clock: ClockCheck) -> ClockCheck:
        """Written only after the download: records made under the old clock were committed with the
        offset measured before it changed."""
        local_now = datetime.now(self.local_tz).replace(tzinfo=None, second=0, microsecond=0)
        reply = await self._ask(write_clock_request(local_now), Command.WRITE_CLOCK)
        try:
            decode_clock(reply)
        except DecodeError as err:
            raise ProtocolError(f"{self.port_path}: clock write answered with {err}") from err
        return dataclasses.replace(clock, was_set=True)

    async def _read_record(self, index: int) -> StoredRecord:
        time_frame = await self._ask(record_time_request(index), Command.RECORD_TIME)
        value_frame = await self._ask(record_value_request(index), Command.RECORD_VALUE)
        return StoredRecord(index, time_frame, value_frame)

    # --- incremental download ---------------------------------------------------------------------

    async def _download(self, profile: ModelProfile, count: int, clock: ClockCheck, notes: list[str]) -> int:
        uid = self.device.uid
        self._ordinal = int(self.state.get(uid, RECORD_ORDINAL_KEY, 0))
        anchor = self._resume_anchor(uid)
        if count == 0:
            if anchor:
                notes.append("device memory is empty (cleared): starting over")
            self.state.set(uid, ANCHOR_KEY, {"fingerprints": [], "index": 0, "count": 0})
            return 0
        if not anchor or not anchor.get("fingerprints"):
            return await self._commit_range(profile, count, count, [], clock, notes)

        fingerprints: list[str] = anchor["fingerprints"]
        expected = anchor["index"] + (count - anchor["count"])
        if 0 <= expected < count and await self._anchor_at(expected, fingerprints, count):
            return await self._commit_range(profile, count, expected, fingerprints, clock, notes)

        # Not where expected: a wrapped (full) memory or a cleared one. Walk down from the newest.
        seen: list[StoredRecord] = []
        for index in range(count):
            seen.append(await self._read_record(index))
            boundary = _find_anchor(seen, fingerprints, count)
            if boundary is not None:
                notes.append(f"last record read found at index {boundary}, not {expected}: memory wrapped")
                return await self._commit_known(profile, count, seen[:boundary], fingerprints, clock, notes)
        notes.append(f"last record read is no longer on the device (cleared): reading all {count}")
        return await self._commit_known(profile, count, seen, [], clock, notes)

    def _resume_anchor(self, uid: str) -> dict[str, Any] | None:
        """Where this session resumes: the acked record's anchor when the cloud's acks are followed,
        else (or before this gateway counted any record of the device) the last committed one."""
        if not self.state.follows_acks or not self._ordinal:
            return self.state.get(uid, ANCHOR_KEY)
        acked = self.state.get(uid, ACKED_SEQUENCE_KEY)
        if not acked:
            return None  # nothing of this device acknowledged yet: its whole memory is read again
        self.state.forget_marks_below(uid, int(acked))
        return self.state.mark_at(uid, int(acked))

    async def _anchor_at(self, index: int, fingerprints: list[str], count: int) -> bool:
        for offset, fingerprint in enumerate(fingerprints):
            if index + offset >= count:
                break  # the older anchor record fell off the end of a full memory
            if (await self._read_record(index + offset)).fingerprint != fingerprint:
                return False
        return True

    async def _commit_range(
        self, profile: ModelProfile, count: int, boundary: int, anchor: list[str], clock: ClockCheck,
        notes: list[str],
    ) -> int:
        """Read and commit records ``boundary - 1`` down to 0 (oldest new first)."""
        committed = 0
        for index in range(boundary - 1, -1, -1):
            record = await self._read_record(index)
            added, anchor = await self._commit_and_advance(profile, record, anchor, count, clock, notes)
            committed += added
        return committed

    async def _commit_known(
        self, profile: ModelProfile, count: int, records: list[StoredRecord], anchor: list[str],
        clock: ClockCheck, notes: list[str],
    ) -> int:
        """Commit records already read in a scan (newest first in ``records``), oldest first."""
        committed = 0
        for record in reversed(records):
            added, anchor = await self._commit_and_advance(profile, record, anchor, count, clock, notes)
            committed += added
        return committed

    async def _commit_and_advance(
        self, profile: ModelProfile, record: StoredRecord, anchor: list[str], count: int, clock: ClockCheck,
        notes: list[str],
    ) -> tuple[int, list[str]]:
        """The one place a record is committed (stored as a reading, or quarantined) and the anchor then
        moves onto it; returns (1 if it became a reading, the new anchor)."""
        self._ordinal += 1
        added = await self._commit(profile, record, clock, notes)
        anchor = [record.fingerprint, *anchor][:ANCHOR_LENGTH]
        value = {"fingerprints": anchor, "index": record.index, "count": count}
        mark = (self._ordinal, value) if self.state.follows_acks else None
        self.state.advance(self.device.uid, {ANCHOR_KEY: value, RECORD_ORDINAL_KEY: self._ordinal}, mark)
        return added, anchor

    async def _commit(self, profile: ModelProfile, record: StoredRecord, clock: ClockCheck, notes: list[str]) -> int:
        try:
            time: RecordTime = decode_record_time(record.time_frame)
            layout = record_kind(profile, time)
            measurement = decode_record(
                record.value_frame,
                layout,
                time,
                raw=record.time_frame.encode() + record.value_frame.encode(),
                details={"model": profile.model, "record_index": record.index},
            )
        except DecodeError as err:
            # The record itself is bad (an error record, an impossible date): it will not get better
            # by reading it again, so it is quarantined with its bytes and the download moves past it.
            notes.append(f"record {record.index} quarantined: {err}")
            raw = record.time_frame.encode() + record.value_frame.encode()
            await self.sink(self.device, undecodable(self.profile, raw, err, record.index), clock)
            return 0
        if self.state.follows_acks:
            await self.sink(self.device, measurement, clock, position=self._ordinal)
        else:
            await self.sink(self.device, measurement, clock)
        return 1


def _find_anchor(seen: list[StoredRecord], fingerprints: list[str], count: int) -> int | None:
    """The index where the anchor's fingerprints start among the records read so far, if they do."""
    n = len(fingerprints)
    last = len(seen) - 1
    start = last - n + 1
    if start >= 0 and [r.fingerprint for r in seen[start:]] == fingerprints:
        return start
    if last == count - 1:
        # End of memory: the anchor's older records may have fallen off a full memory.
        for start in range(max(0, count - n + 1), count):
            if [r.fingerprint for r in seen[start:]] == fingerprints[: count - start]:
                return start
    return None
