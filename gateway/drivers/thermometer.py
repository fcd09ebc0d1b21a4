"""Thermometers over BLE (Health Thermometer Service 0x1809).

Bluetooth SIG HTS 1.0 section 4: the collector enables indications on Temperature Measurement
(0x2A1C); the thermometer indicates the readings it stored while unconnected and, when one is being
taken, notifies Intermediate Temperature (0x2A1E) values until it indicates the final one.

An Intermediate Temperature never becomes a reading (it is a value on its way). The driver still
subscribes to it: a thermometer connected mid-measurement sends only intermediates for tens of
seconds, and each one shows the device is busy, so the session does not end on the idle timeout
before the final reading comes. Where the device has a fixed Temperature Type (0x2A1D) and its
frames name no site, the type read at connect is the site of every reading. A frame that does not
decode is quarantined through the sink (its bytes and reason) and the readings after it still come.
Bonding: HTS 1.0 section 5 lets a thermometer require an encrypted link; the operating system's
pairing agent bonds on the first indication subscription, so the driver needs nothing of its own.
"""

from __future__ import annotations

import asyncio

from gateway.codecs import thermometer as codec
from gateway.codecs.common import DecodeError, Measurement
from gateway.drivers.base import DeviceDisconnectedError, DeviceRecord, SessionResult, undecodable
from gateway.drivers.ble_session import BleContext, uuid16

PROFILE = codec.PROFILE
SERVICE_UUID = uuid16(0x1809)
MEASUREMENT_UUID = uuid16(0x2A1C)
TEMPERATURE_TYPE_UUID = uuid16(0x2A1D)
INTERMEDIATE_UUID = uuid16(0x2A1E)


async def run_session(ctx: BleContext) -> SessionResult:
    """Take every final temperature the thermometer indicates; each is durable before the next."""
    session = ctx.session
    site = await session.read_optional(TEMPERATURE_TYPE_UUID, codec.decode_temperature_type, "temperature type")
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def enqueue(uuid: str, data: bytes) -> None:
        queue.put_nowait((uuid, data))

    if session.has(INTERMEDIATE_UUID):
        await session.subscribe(INTERMEDIATE_UUID, enqueue)
    await session.subscribe(MEASUREMENT_UUID, enqueue)
    emitted = intermediates = 0
    index = -1
    while True:
        try:
            event = await session.receive(queue, session.timeouts.idle_s)
        except DeviceDisconnectedError:
            break
        if event is None:
            break
        uuid, frame = event
        if uuid == INTERMEDIATE_UUID:
            intermediates += 1  # the device is measuring: keep listening, store nothing
            continue
        index += 1
        try:
            record: DeviceRecord = codec.with_temperature_type(codec.decode_measurement(frame), site)
        except DecodeError as err:
            ctx.notes.append(f"undecodable temperature {index}: {err}")
            record = undecodable(PROFILE, frame, err, index)
        await ctx.emit(record)  # committed (stored or quarantined): the next indication may come
        emitted += isinstance(record, Measurement)
    for uuid in (MEASUREMENT_UUID, INTERMEDIATE_UUID):
        await session.unsubscribe(uuid)
    if intermediates:
        ctx.notes.append(f"{intermediates} intermediate temperature(s) seen, none stored")
    return SessionResult(measurements=emitted, clock=ctx.clock, notes=list(ctx.notes))
