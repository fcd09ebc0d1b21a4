"""PLX Spot-Check Measurement (0x2A5E), PLX Continuous Measurement (0x2A5F) and PLX Features (0x2A60).

Bluetooth SIG Pulse Oximeter Service 1.0 (PLXS, 0x1822), section 3.1 (spot-check), 3.2 (continuous)
and 3.3 (features); field formats from the GATT Specification Supplement. SpO2 and pulse amplitude
index are SFLOAT percent, pulse rate SFLOAT beats/min; the Measurement Status is a uint16 (bits 5-15)
and the Device and Sensor Status a uint24 (bits 0-15; 16-23 reserved). Reserved flag bits (spot-check
5-7, continuous 5-7) belong to newer revisions and are ignored, not errors.

A value the spec defines as a percentage but that lies outside 0..100 (or a negative pulse rate) is a
contradictory frame: :class:`InvalidFieldError` naming the field and byte, never a reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.codecs.common import InvalidFieldError, Measurement, Quantity, Reader
from gateway.codecs.ieee11073 import Number, read_date_time_fields, read_sfloat
from gateway.metrics import PULSE_OXIMETRY_FLAGS

SPOT_CHECK_PROFILE = "ble.plx_spot_check"
CONTINUOUS_PROFILE = "ble.plx_continuous"
KIND = "pulse_oximetry"

# PLXS 1.0 section 3.1.1.3 / 3.2.1.4: Measurement Status bit -> name. Bits 0-4 are reserved.
MEASUREMENT_STATUS_BITS: dict[int, str] = {
    5: "measurement_ongoing",
    6: "early_estimate",
    7: "validated_data",
    8: "fully_qualified_data",
    9: "data_from_measurement_storage",
    10: "demonstration_data",
    11: "testing_data",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement",
    15: "invalid_measurement",
}
# PLXS 1.0 section 3.1.1.4: Device and Sensor Status bit -> name. Bits 16-23 are reserved.
DEVICE_SENSOR_STATUS_BITS: dict[int, str] = {
    0: "extended_display_update_ongoing",
    1: "equipment_malfunction",
    2: "signal_processing_irregularity",
    3: "inadequate_signal",
    4: "poor_signal",
    5: "low_perfusion",
    6: "erratic_signal",
    7: "non_pulsatile_signal",
    8: "questionable_pulse",
    9: "signal_analysis_ongoing",
    10: "sensor_interference",
    11: "sensor_unconnected_to_user",
    12: "unknown_sensor_connected",
    13: "sensor_displaced",
    14: "sensor_malfunction",
    15: "sensor_disconnected",
}
# Status bits that say where a value came from rather than how good it is: details only, never flags.
PROVENANCE_BITS = {"validated_data", "fully_qualified_data", "data_from_measurement_storage",
                   "extended_display_update_ongoing"}
assert {*MEASUREMENT_STATUS_BITS.values(), *DEVICE_SENSOR_STATUS_BITS.values()} - PROVENANCE_BITS == set(
    PULSE_OXIMETRY_FLAGS
), "every quality bit of the PLXS status fields has a flag in gateway.metrics"

# Spot-check flags (PLXS 3.1.1.1).
SPOT_TIMESTAMP = 0x01
SPOT_MEASUREMENT_STATUS = 0x02
SPOT_DEVICE_SENSOR_STATUS = 0x04
SPOT_PULSE_AMPLITUDE_INDEX = 0x08
SPOT_CLOCK_NOT_SET = 0x10
# Continuous flags (PLXS 3.2.1.1).
CONT_FAST = 0x01
CONT_SLOW = 0x02
CONT_MEASUREMENT_STATUS = 0x04
CONT_DEVICE_SENSOR_STATUS = 0x08
CONT_PULSE_AMPLITUDE_INDEX = 0x10


def _bit_names(value: int, table: dict[int, str]) -> list[str]:
    return [name for bit, name in table.items() if value & (1 << bit)]


def measurement_status_names(status: int) -> list[str]:
    """Names of every Measurement Status bit that is set, provenance bits included."""
    return _bit_names(status, MEASUREMENT_STATUS_BITS)


def device_sensor_status_names(status: int) -> list[str]:
    """Names of every Device and Sensor Status bit that is set (bits 16-23 are reserved)."""
    return _bit_names(status, DEVICE_SENSOR_STATUS_BITS)


def status_flags(measurement_status: int | None, device_sensor_status: int | None) -> list[str]:
    """The reading flags of the two status fields: quality bits only, measurement status first."""
    names = measurement_status_names(measurement_status or 0) + device_sensor_status_names(device_sensor_status or 0)
    return [name for name in names if name not in PROVENANCE_BITS]


@dataclass(slots=True)
class _Sfloat:
    name: str
    number: Number
    offset: int


def _read(reader: Reader, field: str) -> _Sfloat:
    offset = reader.pos
    return _Sfloat(field, read_sfloat(reader, field), offset)


def _checked(value: _Sfloat, low: float, high: float | None, unit: str) -> None:
    number = value.number.value
    if number is None or not value.number.is_finite:
        return
    if number < low or (high is not None and number > high):
        bound = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
        raise InvalidFieldError(value.name, value.offset, f"{number:g} {unit} is outside {bound}")


def _put(values: dict[str, Quantity], details: dict[str, Any], metric: str, value: _Sfloat, unit: str) -> None:
    if value.number.is_finite and value.number.value is not None:
        values[metric] = Quantity(value.number.value, unit)
    elif value.number.special is not None:
        details[f"{metric}_special"] = value.number.special.value


def _spo2_and_pulse(spo2: _Sfloat, pulse: _Sfloat, details: dict[str, Any]) -> dict[str, Quantity]:
    """The values of the SpO2/PR pair every PLX measurement starts with, checked against their ranges."""
    _checked(spo2, 0, 100, "%")
    _checked(pulse, 0, None, "/min")
    values: dict[str, Quantity] = {}
    _put(values, details, "spo2", spo2, "%")
    _put(values, details, "spo2_pulse_rate", pulse, "/min")
    return values


def _put_pai(values: dict[str, Quantity], details: dict[str, Any], pai: _Sfloat | None) -> None:
    if pai is not None:
        _checked(pai, 0, 100, "%")
        _put(values, details, "pulse_amplitude_index", pai, "%")


def _read_statuses(reader: Reader, has_measurement: bool, has_device: bool, details: dict[str, Any]) -> list[str]:
    measurement_status = device_status = None
    if has_measurement:
        measurement_status = reader.u16("measurement status")
        details["measurement_status"] = measurement_status
        details["measurement_status_bits"] = measurement_status_names(measurement_status)
    if has_device:
        raw = reader.take(3, "device and sensor status")
        device_status = int.from_bytes(raw, "little")
        details["device_sensor_status"] = device_status
        details["device_sensor_status_bits"] = device_sensor_status_names(device_status)
    return status_flags(measurement_status, device_status)


def _finish(profile: str, values: dict[str, Quantity], flags: list[str], data: bytes,
            details: dict[str, Any], device_time: Any = None) -> Measurement:
    if not values:
        flags.append("measurement_unsuccessful")
    return Measurement(
        profile=profile, kind=KIND, values=values, device_time=device_time, flags=tuple(dict.fromkeys(flags)),
        raw=bytes(data), details=details,
    )


def decode_spot_check(data: bytes) -> Measurement:
    """Decode a PLX Spot-Check Measurement (PLXS 1.0 section 3.1).

    Values ``spo2`` (%), ``spo2_pulse_rate`` (/min) and ``pulse_amplitude_index`` (%) as sent; a
    NaN/NRes value is left out (its special kept in ``details``) and a frame with none left is flagged
    ``measurement_unsuccessful``. Flag bit 4 (device clock not set) becomes ``clock_unset``: the time
    stamp is kept as ``device_time`` because it is the record's own identity, but it is no time.
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    spo2 = _read(reader, "spo2")
    pulse = _read(reader, "pulse rate")
    details: dict[str, Any] = {}
    device_time = None
    if flags & SPOT_TIMESTAMP:
        fields, device_time = read_date_time_fields(reader, "timestamp")
        if device_time is None:
            details["device_time_partial"] = str(fields)
    names = _read_statuses(reader, bool(flags & SPOT_MEASUREMENT_STATUS), bool(flags & SPOT_DEVICE_SENSOR_STATUS),
                           details)
    pai = _read(reader, "pulse amplitude index") if flags & SPOT_PULSE_AMPLITUDE_INDEX else None
    values = _spo2_and_pulse(spo2, pulse, details)
    _put_pai(values, details, pai)
    if flags & SPOT_CLOCK_NOT_SET:
        details["device_clock_not_set"] = True
        names.append("clock_unset")
    return _finish(SPOT_CHECK_PROFILE, values, names, data, details, device_time)


def decode_continuous(data: bytes) -> Measurement:
    """Decode a PLX Continuous Measurement (PLXS 1.0 section 3.2).

    SpO2PR-Normal gives the values; SpO2PR-Fast and SpO2PR-Slow (other averaging times of the same
    signal) go to ``details`` as ``spo2_fast``/``pulse_rate_fast``/``spo2_slow``/``pulse_rate_slow``.
    The frame has no time stamp: the gateway times it on receipt.
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    spo2 = _read(reader, "spo2 normal")
    pulse = _read(reader, "pulse rate normal")
    extra: list[tuple[str, _Sfloat, float | None, str]] = []
    if flags & CONT_FAST:
        extra += [("spo2_fast", _read(reader, "spo2 fast"), 100, "%"),
                  ("pulse_rate_fast", _read(reader, "pulse rate fast"), None, "/min")]
    if flags & CONT_SLOW:
        extra += [("spo2_slow", _read(reader, "spo2 slow"), 100, "%"),
                  ("pulse_rate_slow", _read(reader, "pulse rate slow"), None, "/min")]
    details: dict[str, Any] = {}
    names = _read_statuses(reader, bool(flags & CONT_MEASUREMENT_STATUS), bool(flags & CONT_DEVICE_SENSOR_STATUS),
                           details)
    pai = _read(reader, "pulse amplitude index") if flags & CONT_PULSE_AMPLITUDE_INDEX else None
    values = _spo2_and_pulse(spo2, pulse, details)
    for name, value, high, unit in extra:
        _checked(value, 0, high, unit)
        if value.number.is_finite:
            details[name] = value.number.value
        elif value.number.special is not None:
            details[f"{name}_special"] = value.number.special.value
    _put_pai(values, details, pai)
    return _finish(CONTINUOUS_PROFILE, values, names, data, details)


@dataclass(frozen=True, slots=True)
class PlxFeatures:
    """PLX Features (PLXS 1.0 section 3.3): what the oximeter supports.

    ``supported_measurement_status`` / ``supported_device_sensor_status`` are the bit masks that follow
    the feature field when bits 0 / 1 are set (None where absent).
    """

    measurement_status_support: bool
    device_sensor_status_support: bool
    spot_check_storage: bool
    spot_check_timestamp: bool
    spo2pr_fast: bool
    spo2pr_slow: bool
    pulse_amplitude_index: bool
    multiple_bonds: bool
    supported_measurement_status: int | None = None
    supported_device_sensor_status: int | None = None


def decode_features(data: bytes) -> PlxFeatures:
    """Decode PLX Features: uint16 feature bits, then the announced support masks (uint16, uint24)."""
    reader = Reader(data)
    bits = reader.u16("supported features")
    flags = [bool(bits & (1 << bit)) for bit in range(8)]
    measurement = reader.u16("measurement status support") if flags[0] else None
    device = int.from_bytes(reader.take(3, "device and sensor status support"), "little") if flags[1] else None
    return PlxFeatures(*flags, supported_measurement_status=measurement, supported_device_sensor_status=device)
