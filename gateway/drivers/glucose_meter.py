"""Glucose meters over BLE (Glucose Service 0x1808), read incrementally through RACP.

Bluetooth SIG GLS 1.0 section 4.9 (Record Access Control Point procedures) and 3.106-3.108: the
collector enables notifications on Glucose Measurement (0x2A18) and Measurement Context (0x2A34) and
indications on the RACP (0x2A52), then writes "report stored records": all records on first contact,
else those with sequence number ≥ last + 1. The meter notifies each record (a context, where the
measurement's flags announce one, follows with the same sequence number) and indicates a response
code when done; "no records found" is a normal end.

Two positions per meter, both in the durable ``DeviceStateStore``. The *download cursor*
(:data:`LAST_SEQUENCE_KEY`) is the highest sequence number committed through the sink (the reading is
in the outbox, or the record is in the device quarantine because it could not become one); it is
advanced only after the sink returned, and it is what the numbering checks compare against. The
*acked position* (:data:`ACKED_SEQUENCE_KEY`) follows the cloud's acks
(:class:`~gateway.store.acked_positions.AckedPositions`, wired by the runtime): the meter's memory stays the
backup until the cloud holds a record, so a session asks for records after the acked position, and a
reading the outbox lost before its ack (a cap, a damaged file, a torn write) is read again. Records
re-read that are still in the outbox are known to the intake and not sent again. Where no acks are
followed (``state.follows_acks`` false: a sink that is no outbox), a session resumes after the cursor.

A link lost mid-transfer leaves the cursor at the last durable record. A bad record never blocks the
meter: it is committed to quarantine and both positions move past it like past any other (it will
never be acked, so it does not hold the acked position back). A frame too broken to decode shows no
sequence number; it is quarantined (once: the same bytes again are known) and the next good record
moves the sequence past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.codecs import glucose as codec
from gateway.codecs import racp
from gateway.codecs.common import DecodeError, Measurement
from gateway.drivers.base import (
    DeviceDisconnectedError,
    DeviceRecord,
    DeviceTimeoutError,
    DriverError,
    SessionResult,
    undecodable,
)
from gateway.drivers.ble_session import BleContext, uuid16

log = logging.getLogger(__name__)

PROFILE = "ble.glucose"
SERVICE_UUID = uuid16(0x1808)
MEASUREMENT_UUID = uuid16(0x2A18)
CONTEXT_UUID = uuid16(0x2A34)
RACP_UUID = uuid16(0x2A52)
# Strings, not imports from gateway.drivers.device_state (drivers stay below the gateway core); a test ties them.
LAST_SEQUENCE_KEY = "glucose_last_sequence"
ACKED_SEQUENCE_KEY = "acked_sequence"

# RACP op codes and response values (GLS 1.0 section 3.108, tables 3.12 and 3.14).
OP_REPORT_STORED_RECORDS = 1
RESPONSE_SUCCESS = 1
RESPONSE_NO_RECORDS_FOUND = 6


class RacpError(DriverError):
    """The meter answered the RACP request with an error response code."""


class SequenceRestartedError(DriverError):
    """The meter's newest record has a lower sequence number than the last one read: its numbering
    restarted (memory reset, battery change, 16-bit wrap). Records numbered again from 0 would share
    reading ids with the old ones (ids are built from the sequence number), so they are not read;
    this error keeps the device's status red instead of losing them silently."""


async def run_session(ctx: BleContext) -> SessionResult:
    """Fetch every record after the resume position (:func:`resume_after`); each is durable before the
    next is taken."""
    session = ctx.session
    uid = ctx.device.uid
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def enqueue(uuid: str, data: bytes) -> None:
        queue.put_nowait((uuid, data))

    await session.subscribe(MEASUREMENT_UUID, enqueue)
    if session.has(CONTEXT_UUID):
        await session.subscribe(CONTEXT_UUID, enqueue)
    await session.subscribe(RACP_UUID, enqueue)

    cursor = ctx.state.get(uid, LAST_SEQUENCE_KEY)
    resume = resume_after(ctx)
    # The highest sequence ever read, for the numbering checks (the acked position may be behind it).
    read = [int(v) for v in (cursor, resume) if v is not None]
    last = max(read) if read else None
    if resume is not None and resume >= 0xFFFF:
        # Nothing can be newer than 65535 in a uint16: the next record wrapped the counter.
        await _check_numbering(ctx, queue, max(read))
        return SessionResult(measurements=0, clock=ctx.clock, notes=list(ctx.notes))
    request = racp.encode_report_all() if resume is None else racp.encode_report_greater_or_equal(resume + 1)
    await session.write(RACP_UUID, request)

    emitted = 0
    pending: Measurement | None = None

    async def commit(record: DeviceRecord) -> None:
        """The one place a record is committed and the download cursor advances past it."""
        nonlocal emitted, cursor
        if isinstance(record, Measurement) and "control_solution" in record.flags:
            # GLS sample type/location "control solution": a meter check, not a patient reading.
            log.info("%s: record %s is a control-solution test; not a reading", session.address, record.sequence)
            ctx.notes.append(f"control solution record {record.sequence} skipped")
        else:
            await ctx.emit(record)  # durable now: stored as a reading, or quarantined
            emitted += isinstance(record, Measurement)
        if isinstance(record, Measurement) and record.sequence is not None:
            # Never backwards: a session re-reading unacked records passes below the cursor again.
            if cursor is None or record.sequence > int(cursor):
                cursor = record.sequence
                ctx.state.set(uid, LAST_SEQUENCE_KEY, cursor)

    try:
        while True:
            event = await session.receive(queue, session.timeouts.op_s)
            if event is None:
                raise DeviceTimeoutError(
                    f"{session.address}: no record or RACP response for {session.timeouts.op_s:g} s"
                )
            uuid, frame = event
            if uuid == CONTEXT_UUID:
                try:
                    context = codec.decode_context(frame)
                except DecodeError as err:
                    log.warning("%s: glucose context does not decode (%s): %s", session.address, frame.hex(), err)
                    ctx.notes.append(f"undecodable context: {err}")
                    continue
                if pending is not None and pending.sequence == context.sequence:
                    pending, joined = None, codec.attach_context(pending, context)
                    await commit(joined)
                else:
                    log.info("%s: context %s has no waiting measurement", session.address, context.sequence)
                continue
            if pending is not None:
                # The announced context never came; the measurement stands on its own.
                pending, alone = None, pending
                await commit(alone)
            if uuid == MEASUREMENT_UUID:
                try:
                    measurement = codec.decode_measurement(frame)
                except DecodeError as err:
                    ctx.notes.append(f"undecodable record: {err}")
                    await commit(undecodable(PROFILE, frame, err))
                    continue
                if measurement.details.get("context_follows"):
                    pending = measurement
                else:
                    await commit(measurement)
                continue
            if uuid == RACP_UUID:
                response = racp.decode_response(frame)
                value = getattr(response, "value", None)
                if value == RESPONSE_SUCCESS:
                    break
                if value == RESPONSE_NO_RECORDS_FOUND:
                    ctx.notes.append("no new records")
                    if last is not None:
                        await _check_numbering(ctx, queue, last)
                    break
                raise RacpError(f"{session.address}: RACP answered {response}")
    except DeviceTimeoutError:
        # Ask the meter to stop so the next session does not find a procedure still running.
        with contextlib.suppress(DriverError):
            await session.write(RACP_UUID, racp.encode_abort())
        raise
    except DeviceDisconnectedError:
        log.info("%s: link lost after %d record(s); the next session resumes after sequence %s",
                 session.address, emitted, resume_after(ctx))
        raise
    except DecodeError as err:
        raise RacpError(f"{session.address}: RACP response does not decode: {err}") from err
    for uuid in (MEASUREMENT_UUID, CONTEXT_UUID, RACP_UUID):
        await session.unsubscribe(uuid)
    return SessionResult(measurements=emitted, clock=ctx.clock, notes=list(ctx.notes))


def resume_after(ctx: BleContext) -> int | None:
    """The sequence number a new session asks for records after (None: ask for all): the acked
    position where the store follows the cloud's acks, else the download cursor."""
    state = ctx.state
    value = state.get(ctx.device.uid, ACKED_SEQUENCE_KEY if state.follows_acks else LAST_SEQUENCE_KEY)
    return None if value is None else int(value)


async def _check_numbering(ctx: BleContext, queue: asyncio.Queue[tuple[str, bytes]], last: int) -> None:
    """Ask for the meter's newest record ("report stored records: last record") and compare its
    sequence number with the last one read; raise SequenceRestartedError when it went backwards."""
    session = ctx.session
    await session.write(RACP_UUID, racp.encode_report_stored_records(racp.Operator.LAST_RECORD))
    newest: int | None = None
    while True:
        event = await session.receive(queue, session.timeouts.op_s)
        if event is None:
            raise DeviceTimeoutError(f"{session.address}: no answer to 'report last record'")
        uuid, frame = event
        if uuid == MEASUREMENT_UUID:
            try:
                newest = codec.decode_measurement(frame).sequence
            except DecodeError as err:
                log.warning("%s: newest record does not decode: %s", session.address, err)
        elif uuid == RACP_UUID:
            break
    if newest is not None and newest < last:
        raise SequenceRestartedError(
            f"{session.address}: meter numbering restarted (newest record {newest}, last read {last}); "
            "records numbered again would share reading ids with old ones, so none are read"
        )
