"""Pulse oximeters over BLE (Pulse Oximeter Service 0x1822): stored spot-checks and a live stream.

Bluetooth SIG PLXS 1.0 section 4. The driver reads PLX Features (0x2A60), enables indications on
PLX Spot-Check Measurement (0x2A5E) and the Record Access Control Point (0x2A52, where the oximeter
stores spot-checks) and notifications on PLX Continuous Measurement (0x2A5F, where it streams), then:

1. **Stored spot-checks.** It writes "report stored records: all records" (``01 01``; PLXS defines no
   other operator, since the records carry no sequence number to filter on) and takes each record
   the oximeter indicates until the RACP response ends the transfer ("no records found" is a normal
   end). The memory is never deleted from the gateway: it is the second copy of every record until
   the cloud has acknowledged it.
2. **The live stream.** Continuous samples are windowed by :class:`~gateway.drivers.oximetry_window.OximetryWindow`
   (one reading per ``[ble] heart_rate_cadence_s``, default a minute: the window's lowest SpO2 held
   for three samples, median pulse rate) until the oximeter stops (link lost, silent for the op
   timeout) or ``heart_rate_max_session_s`` passes; the open window is flushed at the end.

**How a stored record is identified (no sequence number).** Its reading id is built, as for every
record without a sequence number, from the device uid, the kind and the record's *own* content: the
device's raw time stamp and its raw values (``gateway.contract.compute_reading_id``), never the
corrected time. Reading the whole memory again therefore yields the same ids, and the outbox (which
remembers confirmed ids) and the cloud (``readings.id`` is the primary key) store each record once:
a second download doubles nothing. A record with no time stamp at all (an oximeter without a clock)
is named by its frame bytes and its occurrence among identical frames in that download
(``details["record_key"] = "<hex>#<n>"``): two identical clockless records stay two readings, and the
same memory read again gives the same keys. A record flagged "device clock not set" keeps its time
stamp as identity, but its reading is timed by the gateway and flagged ``clock_unset``.

A frame that does not decode (or decodes to a contradiction) is quarantined through the sink with its
bytes and position, and the transfer goes on. Readings flagged invalid, questionable, low perfusion,
sensor displaced, demonstration or testing data are sent with their flags: the cloud stores them and
never judges them. Bonding: PLXS 1.0 section 5 lets an oximeter require an encrypted link and Features
bit 7 says whether it bonds with several collectors; the operating system's pairing agent bonds on
the first indication subscription, so the driver only notes the feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from gateway.codecs import pulse_oximeter as codec
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
from gateway.drivers.oximetry_window import OximetryWindow

log = logging.getLogger(__name__)

PROFILE = "ble.pulse_oximeter"
SERVICE_UUID = uuid16(0x1822)
SPOT_CHECK_UUID = uuid16(0x2A5E)
CONTINUOUS_UUID = uuid16(0x2A5F)
FEATURES_UUID = uuid16(0x2A60)
RACP_UUID = uuid16(0x2A52)


class RacpError(DriverError):
    """The oximeter answered the RACP request with an error response code."""


class _RecordKeys:
    """Names clockless stored records by frame bytes and occurrence within one download."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}

    def named(self, measurement: Measurement) -> Measurement:
        if measurement.device_time is not None:
            return measurement
        n = self._seen.get(measurement.raw, 0)
        self._seen[measurement.raw] = n + 1
        return replace(measurement, details={**measurement.details, "record_key": f"{measurement.raw.hex()}#{n}"})


async def run_session(ctx: BleContext) -> SessionResult:
    """Download stored spot-checks, then window the live stream; every record is durable before the next."""
    session = ctx.session
    features = await session.read_optional(FEATURES_UUID, codec.decode_features, "PLX features")
    if features is not None and features.multiple_bonds:
        ctx.notes.append("oximeter supports multiple bonds")
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def enqueue(uuid: str, data: bytes) -> None:
        queue.put_nowait((uuid, data))

    subscribed = [uuid for uuid in (SPOT_CHECK_UUID, RACP_UUID, CONTINUOUS_UUID) if session.has(uuid)]
    for uuid in subscribed:
        await session.subscribe(uuid, enqueue)
    streaming = CONTINUOUS_UUID in subscribed
    downloading = RACP_UUID in subscribed and (features is None or features.spot_check_storage)
    if downloading:
        await session.write(RACP_UUID, racp.encode_report_all())

    loop = asyncio.get_running_loop()
    deadline = None if ctx.max_session_s is None else loop.time() + ctx.max_session_s
    window = OximetryWindow(ctx.heart_rate_cadence_s)
    keys = _RecordKeys()
    emitted = stored_index = samples = 0
    last_frame_at = loop.time()

    async def commit(record: DeviceRecord) -> None:
        nonlocal emitted
        # Shielded: a record taken from the device (or a closed window) must reach the sink whole.
        await asyncio.shield(ctx.emit(record))
        emitted += isinstance(record, Measurement)

    try:
        while deadline is None or loop.time() < deadline:
            silence = session.timeouts.op_s if (streaming or downloading) else session.timeouts.idle_s
            wait = last_frame_at + silence - loop.time()
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
            try:
                event = await session.receive(queue, max(wait, 0.0))
            except DeviceDisconnectedError:
                if downloading:
                    log.info("%s: link lost during the spot-check download; the next session reads the "
                             "memory again (ids make that a no-op)", session.address)
                    raise
                break
            if event is None:
                if loop.time() - last_frame_at < silence:
                    continue  # the session deadline, not silence, woke us
                if downloading:
                    with contextlib.suppress(DriverError):
                        await session.write(RACP_UUID, racp.encode_abort())
                    raise DeviceTimeoutError(f"{session.address}: no spot-check record or RACP response for "
                                             f"{silence:g} s")
                break
            last_frame_at = loop.time()
            uuid, frame = event
            if uuid == SPOT_CHECK_UUID:
                try:
                    record: DeviceRecord = keys.named(codec.decode_spot_check(frame))
                except DecodeError as err:
                    ctx.notes.append(f"undecodable spot-check {stored_index}: {err}")
                    record = undecodable(codec.SPOT_CHECK_PROFILE, frame, err, stored_index)
                stored_index += 1
                await commit(record)
            elif uuid == CONTINUOUS_UUID:
                try:
                    sample = codec.decode_continuous(frame)
                except DecodeError as err:
                    # A live sample is one second of many: a broken one is logged, not a record to keep.
                    log.warning("%s: skipped a continuous frame that does not decode (%s): %s",
                                session.address, frame.hex(), err)
                    ctx.notes.append(f"undecodable continuous frame: {err}")
                    continue
                samples += 1
                closed = window.add(sample, ctx.now())
                if closed is not None:
                    await commit(closed)
            elif uuid == RACP_UUID:
                try:
                    response = racp.decode_response(frame)
                except DecodeError as err:
                    raise RacpError(f"{session.address}: RACP response does not decode: {err}") from err
                if not isinstance(response, racp.ResponseCode) or not response.ok:
                    raise RacpError(f"{session.address}: RACP answered {response}")
                if response.value is racp.ResponseValue.NO_RECORDS_FOUND:
                    ctx.notes.append("no stored spot-checks")
                downloading = False
                if not streaming:
                    break
    except asyncio.CancelledError:
        partial = window.flush(ctx.now())
        if partial is not None:
            await asyncio.shield(ctx.emit(partial))
        raise
    last = window.flush(ctx.now())
    if last is not None:
        await commit(last)
    for uuid in subscribed:
        await session.unsubscribe(uuid)
    if samples:
        ctx.notes.append(f"{samples} continuous sample(s)")
    return SessionResult(measurements=emitted, clock=ctx.clock, notes=list(ctx.notes))
