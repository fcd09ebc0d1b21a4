"""Heart-rate straps over BLE (Heart Rate Service 0x180D).

Bluetooth SIG HRS 1.0 section 4: the collector enables notifications on Heart Rate Measurement
(0x2A37) and receives live frames (often 1-4 per second). A :class:`HeartRateWindow` turns them into
one reading per cadence; the open window is flushed when the strap goes away.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.codecs import heart_rate as codec
from gateway.codecs.common import DecodeError
from gateway.drivers.base import DeviceDisconnectedError, SessionResult
from gateway.drivers.ble_session import BleContext, uuid16
from gateway.drivers.heart_rate_window import HeartRateWindow

log = logging.getLogger(__name__)

PROFILE = "ble.heart_rate"
SERVICE_UUID = uuid16(0x180D)
MEASUREMENT_UUID = uuid16(0x2A37)


async def run_session(ctx: BleContext) -> SessionResult:
    """Window live notifications until the strap stops (link lost, or silent for the op timeout) or
    ``ctx.max_session_s`` passes; every closed window goes to the sink before the next frame is read."""
    session = ctx.session
    window = HeartRateWindow(ctx.heart_rate_cadence_s)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    await session.subscribe(MEASUREMENT_UUID, lambda u, data: queue.put_nowait((u, data)))
    loop = asyncio.get_running_loop()
    deadline = None if ctx.max_session_s is None else loop.time() + ctx.max_session_s
    emitted = 0
    frames = 0
    last_frame_at = loop.time()
    try:
        while deadline is None or loop.time() < deadline:
            silence_left = last_frame_at + session.timeouts.op_s - loop.time()
            wait = silence_left if deadline is None else min(silence_left, deadline - loop.time())
            try:
                event = await session.receive(queue, max(wait, 0.0))
            except DeviceDisconnectedError:
                break
            if event is None:
                if loop.time() - last_frame_at >= session.timeouts.op_s:
                    log.info("%s: no heart rate for %g s; ending the session", session.address,
                             session.timeouts.op_s)
                    break
                continue
            last_frame_at = loop.time()
            _, frame = event
            try:
                measurement = codec.decode_measurement(frame)
            except DecodeError as err:
                log.warning("%s: skipped a heart-rate frame that does not decode (%s): %s", session.address,
                            frame.hex(), err)
                ctx.notes.append(f"undecodable frame: {err}")
                continue
            frames += 1
            closed = window.add(measurement, ctx.now())
            if closed is not None:
                # Shielded: a window taken out of the HeartRateWindow must reach the sink even if the
                # gateway is shutting down around it.
                await asyncio.shield(ctx.emit(closed))
                emitted += 1
    except asyncio.CancelledError:
        # Shutdown: the open window is what the strap sent since the last reading; keep it.
        partial = window.flush(ctx.now())
        if partial is not None:
            await asyncio.shield(ctx.emit(partial))
        raise
    last = window.flush(ctx.now())
    if last is not None:
        await ctx.emit(last)
        emitted += 1
    await session.unsubscribe(MEASUREMENT_UUID)
    ctx.notes.append(f"{frames} live frame(s)")
    return SessionResult(measurements=emitted, clock=ctx.clock, notes=list(ctx.notes))
