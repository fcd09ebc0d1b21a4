"""Weight scales over BLE (Weight Scale Service 0x181D).

Bluetooth SIG WSS 1.0 section 4: the collector enables indications on Weight Measurement (0x2A9D);
the scale indicates its stored measurements (SI or imperial, with user index, BMI and height where
it has them) and ends the link.
"""

from __future__ import annotations

from gateway.codecs import weight_scale as codec
from gateway.drivers.base import SessionResult
from gateway.drivers.ble_session import BleContext, collect_stored_measurements, uuid16

PROFILE = "ble.weight_scale"
SERVICE_UUID = uuid16(0x181D)
MEASUREMENT_UUID = uuid16(0x2A9D)


async def run_session(ctx: BleContext) -> SessionResult:
    """Collect the stored measurements the scale indicates on connect; each is durable before the next."""
    return await collect_stored_measurements(ctx, MEASUREMENT_UUID, codec.decode_measurement)
