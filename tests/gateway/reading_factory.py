"""Readings for runtime tests, built the way the gateway builds them: Measurement → to_reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.codecs.common import Measurement, Quantity
from gateway.contract import Reading
from gateway.drivers.base import DeviceInfo
from gateway.readings.normalise import to_reading

BASE_TIME = datetime(2026, 3, 1, 8, 0, 0)


def cuff(uid: str = "ble:00:11:22:33:44:55") -> DeviceInfo:
    return DeviceInfo(uid=uid, transport="ble", profile="ble.blood_pressure", model="sim-cuff")


def bp_measurement(sequence: int) -> Measurement:
    """A stored cuff record: the sequence number makes the reading id deterministic."""
    return Measurement(
        profile="ble.blood_pressure",
        kind="blood_pressure",
        values={
            "systolic": Quantity(110 + sequence % 40, "mm[Hg]"),
            "diastolic": Quantity(70 + sequence % 20, "mm[Hg]"),
            "pulse_rate": Quantity(60 + sequence % 30, "/min"),
        },
        device_time=BASE_TIME + timedelta(minutes=sequence),
        sequence=sequence,
        raw=bytes([0x1E, sequence % 256]),
    )


def bp_reading(sequence: int, uid: str = "ble:00:11:22:33:44:55") -> Reading:
    return to_reading(cuff(uid), bp_measurement(sequence), None, datetime.now(UTC), local_tz=UTC)
