"""Weight Measurement (0x2A9D).

Bluetooth SIG Weight Scale Service 1.0, section 3.2 (and the GATT Specification Supplement's Weight
Measurement). Flags: bit 0 units (0 SI kg/m, 1 imperial lb/in), bit 1 time stamp, bit 2 user id,
bit 3 BMI *and* height (one bit for both). Weight uint16 at 0.005 kg or 0.01 lb, 0xFFFF =
measurement unsuccessful; BMI uint16 at 0.1 kg/m2; height uint16 at 0.001 m or 0.1 in.
"""

from __future__ import annotations

from typing import Any

from gateway.codecs.common import Measurement, Quantity, Reader
from gateway.codecs.ieee11073 import read_date_time_fields

PROFILE = "ble.weight_scale"
UNKNOWN_USER = 0xFF
WEIGHT_UNSUCCESSFUL = 0xFFFF


def _scaled(raw: int, step_digits: int, exponent: int) -> float:
    # raw x step x 10^exponent computed on decimal digits: 14300 x 0.005 kg is 71.5, not 71.50000000000001.
    return float(f"{raw * step_digits}e{exponent}")


def decode_measurement(data: bytes) -> Measurement:
    """Decode a Weight Measurement (WSS 1.0 section 3.2): weight as ``kg`` or ``[lb_av]``, BMI as
    ``kg/m2``, height as ``m`` or ``[in_i]`` (units as sent; normalisation converts)."""
    reader = Reader(data)
    flags = reader.u8("flags")
    imperial = bool(flags & 0x01)
    raw_weight = reader.u16("weight")
    details: dict[str, Any] = {"units": "imperial" if imperial else "SI"}
    values: dict[str, Quantity] = {}
    status: list[str] = []
    if raw_weight == WEIGHT_UNSUCCESSFUL:
        status.append("measurement_unsuccessful")
    elif imperial:
        values["body_weight"] = Quantity(_scaled(raw_weight, 1, -2), "[lb_av]")
    else:
        values["body_weight"] = Quantity(_scaled(raw_weight, 5, -3), "kg")
    device_time = None
    if flags & 0x02:
        fields, device_time = read_date_time_fields(reader, "time stamp")
        if device_time is None:
            details["device_time_partial"] = str(fields)
    user_index = None
    if flags & 0x04:
        user = reader.u8("user id")
        user_index = None if user == UNKNOWN_USER else user
    if flags & 0x08:
        values["bmi"] = Quantity(_scaled(reader.u16("bmi"), 1, -1), "kg/m2")
        raw_height = reader.u16("height")
        values["height"] = (
            Quantity(_scaled(raw_height, 1, -1), "[in_i]") if imperial else Quantity(_scaled(raw_height, 1, -3), "m")
        )
    return Measurement(
        profile=PROFILE,
        kind="body_weight",
        values=values,
        device_time=device_time,
        user_index=user_index,
        flags=tuple(status),
        raw=bytes(data),
        details=details,
    )
