"""Blood-pressure cuffs over BLE (Blood Pressure Service 0x1810).

Bluetooth SIG BLS 1.1 section 4: the collector enables indications on Blood Pressure Measurement
(0x2A35); the cuff then indicates every stored measurement and ends the link. Multi-user cuffs put
the user index in each record, and it travels with the reading.
"""

from __future__ import annotations

from gateway.codecs import blood_pressure as codec
from gateway.drivers.base import SessionResult
from gateway.drivers.ble_session import BleContext, collect_stored_measurements, uuid16

PROFILE = codec.PROFILE
SERVICE_UUID = uuid16(0x1810)
MEASUREMENT_UUID = uuid16(0x2A35)


async def run_session(ctx: BleContext) -> SessionResult:
    """Collect the stored measurements the cuff indicates on connect; each is durable before the next."""
    return await collect_stored_measurements(ctx, MEASUREMENT_UUID, codec.decode_measurement)
