"""Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36).

Bluetooth SIG Blood Pressure Service 1.1, section 3.1 (measurement) and 3.2 (intermediate cuff
pressure); field formats from the GATT Specification Supplement. Flags: bit 0 unit (kPa), bit 1 time
stamp, bit 2 pulse rate, bit 3 user id, bit 4 measurement status. Newer flag bits are ignored.
"""

from __future__ import annotations

from typing import Any

from gateway.codecs.common import Measurement, Quantity, Reader
from gateway.codecs.ieee11073 import Number, read_date_time_fields, read_sfloat
from gateway.metrics import BP_FLAGS

PROFILE = "ble.blood_pressure"
INTERMEDIATE_PROFILE = "ble.intermediate_cuff_pressure"
UNKNOWN_USER = 0xFF

_STATUS_BITS = {0: "body_movement", 1: "cuff_too_loose", 2: "irregular_pulse", 5: "improper_position"}
_PULSE_RANGE = {1: "pulse_rate_above_range", 2: "pulse_rate_below_range"}
assert set(_STATUS_BITS.values()) | set(_PULSE_RANGE.values()) == set(BP_FLAGS)


def status_flags(status: int) -> list[str]:
    """Names of the measurement status bits that are set (bits 3-4 value 3 is reserved)."""
    flags = [name for bit, name in _STATUS_BITS.items() if status & (1 << bit)]
    pulse_range = (status >> 3) & 0b11
    if pulse_range in _PULSE_RANGE:
        flags.append(_PULSE_RANGE[pulse_range])
    return flags


def decode_measurement(data: bytes, *, profile: str = PROFILE) -> Measurement:
    """Decode a Blood Pressure Measurement (or, with ``profile``, an Intermediate Cuff Pressure).

    BLS 1.1 section 3.1.1: pressures in the flagged unit (mm[Hg] or kPa, as sent; normalisation
    converts), pulse rate in /min, user id 0xFF = unknown user (None), measurement status bits as
    the flag names of ``specs/metrics.md``. NaN/NRes/INF values are left out of ``values`` (their
    special is kept in ``details``); a frame with no value left is flagged ``measurement_unsuccessful``.
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    unit = "kPa" if flags & 0x01 else "mm[Hg]"
    pressures: dict[str, Number] = {
        "systolic": read_sfloat(reader, "systolic"),
        "diastolic": read_sfloat(reader, "diastolic"),
        "mean_arterial": read_sfloat(reader, "mean arterial pressure"),
    }
    details: dict[str, Any] = {"unit_flag": unit}
    device_time = None
    if flags & 0x02:
        fields, device_time = read_date_time_fields(reader, "time stamp")
        if device_time is None:
            # e.g. a cuff that never had its year set sends 0000-04-17: keep what it said for audit.
            details["device_time_partial"] = str(fields)
    pulse = read_sfloat(reader, "pulse rate") if flags & 0x04 else None
    user_index = None
    if flags & 0x08:
        user = reader.u8("user id")
        user_index = None if user == UNKNOWN_USER else user
    status_names: list[str] = []
    if flags & 0x10:
        status = reader.u16("measurement status")
        details["measurement_status"] = status
        status_names = status_flags(status)

    values: dict[str, Quantity] = {}
    for name, number in pressures.items():
        if number.is_finite and number.value is not None:
            values[name] = Quantity(number.value, unit)
        elif number.special is not None:
            details[f"{name}_special"] = number.special.value
    if pulse is not None:
        if pulse.is_finite and pulse.value is not None:
            values["pulse_rate"] = Quantity(pulse.value, "/min")
        elif pulse.special is not None:
            details["pulse_rate_special"] = pulse.special.value
    if profile == INTERMEDIATE_PROFILE:
        # Only the current cuff pressure (the systolic field) is meaningful in 0x2A36.
        values = {k: v for k, v in values.items() if k in ("systolic", "pulse_rate")}
    if not values:
        status_names.append("measurement_unsuccessful")
    return Measurement(
        profile=profile,
        kind="blood_pressure",
        values=values,
        device_time=device_time,
        user_index=user_index,
        flags=tuple(status_names),
        raw=bytes(data),
        details=details,
    )


def decode_intermediate_cuff_pressure(data: bytes) -> Measurement:
    """Intermediate Cuff Pressure (0x2A36, BLS 1.1 section 3.2): the cuff pressure travels as ``systolic``."""
    return decode_measurement(data, profile=INTERMEDIATE_PROFILE)
