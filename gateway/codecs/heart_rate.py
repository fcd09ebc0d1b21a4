"""Heart Rate Measurement (0x2A37).

Bluetooth SIG Heart Rate Service 1.0, section 3.1. Flags: bit 0 value format (uint8 / uint16),
bits 1-2 sensor contact (bit 2 detection supported, bit 1 contact detected), bit 3 energy expended
(uint16 kJ), bit 4 RR intervals (uint16 each, 1/1024 s) filling the rest of the frame.
"""

from __future__ import annotations

from typing import Any

from gateway.codecs.common import Measurement, Quantity, Reader, TruncatedError

PROFILE = "ble.heart_rate"


def sensor_contact(flags: int) -> str:
    """``not_supported``, ``detected`` or ``not_detected`` from flag bits 1-2."""
    if not flags & 0x04:
        return "not_supported"
    return "detected" if flags & 0x02 else "not_detected"


def decode_measurement(data: bytes) -> Measurement:
    """Decode a Heart Rate Measurement (HRS 1.0 section 3.1).

    A strap that supports contact detection and reports no contact is flagged
    ``sensor_contact_lost`` (its value is still kept: the vector ``04ff`` asserts 255 bpm). A heart
    rate of 0 is what straps send before they have a beat, so it is not a value; a frame left with no
    value is flagged ``measurement_unsuccessful``. RR intervals stay in the wire's ``s/1024``.
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    bpm = reader.u16("heart rate") if flags & 0x01 else reader.u8("heart rate")
    contact = sensor_contact(flags)
    details: dict[str, Any] = {"sensor_contact": contact}
    values: dict[str, Quantity] = {}
    status: list[str] = []
    if bpm:
        values["heart_rate"] = Quantity(float(bpm), "/min")
    if contact == "not_detected":
        status.append("sensor_contact_lost")
    if flags & 0x08:
        values["energy_expended"] = Quantity(float(reader.u16("energy expended")), "kJ")
    if flags & 0x10:
        if reader.remaining % 2:
            raise TruncatedError("rr interval", len(reader.data) - 1, 2, len(reader.data))
        intervals = tuple(float(reader.u16("rr interval")) for _ in range(reader.remaining // 2))
        if intervals:
            values["rr_intervals"] = Quantity(intervals, "s/1024")
    if not values:
        status.append("measurement_unsuccessful")
    return Measurement(
        profile=PROFILE,
        kind="heart_rate",
        values=values,
        flags=tuple(status),
        raw=bytes(data),
        details=details,
    )
