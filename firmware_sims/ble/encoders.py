"""Byte encoders for the Bluetooth SIG health profiles, written from the specifications.

Sources (summarised in ``specs/ble-gatt.md``): IEEE 11073-20601 (SFLOAT, FLOAT), the GATT
Specification Supplement (Date Time, Current Time, Battery Level), Blood Pressure Service 1.1
(0x2A35, 0x2A36, 0x2A49), Glucose Service 1.0 (0x2A18, 0x2A34, 0x2A51, 0x2A52 RACP), Weight Scale
Service 1.0 (0x2A9D, 0x2A9E) and Heart Rate Service 1.0 (0x2A37). All integers little-endian.

This module deliberately shares nothing with ``gateway.codecs``: it is the other half of every
round-trip test, so it must be an independent reading of the spec.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

# --- IEEE 11073-20601 numbers -------------------------------------------------------------------

NAN = "NaN"
NRES = "NRes"
POSITIVE_INFINITY = "+INFINITY"
NEGATIVE_INFINITY = "-INFINITY"
RESERVED = "reserved"
SPECIALS = (NAN, NRES, POSITIVE_INFINITY, NEGATIVE_INFINITY, RESERVED)

# Special values live at exponent 0 (IEEE 11073-20601 section F.8, table F.2).
_SFLOAT_SPECIAL_RAW = {
    NAN: 0x07FF,
    NRES: 0x0800,
    POSITIVE_INFINITY: 0x07FE,
    NEGATIVE_INFINITY: 0x0802,
    RESERVED: 0x0801,
}
_FLOAT_SPECIAL_RAW = {
    NAN: 0x007FFFFF,
    NRES: 0x00800000,
    POSITIVE_INFINITY: 0x007FFFFE,
    NEGATIVE_INFINITY: 0x00800002,
    RESERVED: 0x00800001,
}

Number = float | int | str
"""A finite value, a float NaN/inf, or one of the special names above."""


class EncodeError(ValueError):
    """A value cannot be represented in the field's wire format."""


def _special_name(value: Number) -> str | None:
    if isinstance(value, str):
        if value not in SPECIALS:
            raise EncodeError(f"unknown special value {value!r}; known: {', '.join(SPECIALS)}")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return NAN
        if math.isinf(value):
            return POSITIVE_INFINITY if value > 0 else NEGATIVE_INFINITY
    return None


def _mantissa_exponent(
    value: float | int, *, mantissa_bits: int, exp_min: int, exp_max: int, reserved: set[int]
) -> tuple[int, int]:
    """Choose (mantissa, exponent) for a finite value: exact where the field can hold it, with the
    exponent 0 a device would use for whole numbers, else rounded to the most precise fit."""
    m_max = (1 << (mantissa_bits - 1)) - 1
    m_min = -(1 << (mantissa_bits - 1))
    exact = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    exact = exact.normalize()
    exponent = min(int(exact.as_tuple().exponent), 0)
    exponent = max(exponent, exp_min)
    while exponent <= exp_max:
        mantissa = int(exact.scaleb(-exponent).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        # At exponent 0 a handful of mantissas mean NaN/NRes/INF instead of a number.
        if m_min <= mantissa <= m_max and not (exponent == 0 and mantissa in reserved):
            return mantissa, exponent
        exponent += 1
    raise EncodeError(f"{value!r} is too large for a {mantissa_bits}-bit mantissa")


_SFLOAT_RESERVED_MANTISSAS = {2047, -2048, 2046, -2046, -2047}
_FLOAT_RESERVED_MANTISSAS = {0x7FFFFF, -0x800000, 0x7FFFFE, -0x7FFFFE, -0x7FFFFF}


def sfloat_raw(value: Number) -> int:
    """The 16-bit SFLOAT of ``value`` as an unsigned integer."""
    special = _special_name(value)
    if special is not None:
        return _SFLOAT_SPECIAL_RAW[special]
    mantissa, exponent = _mantissa_exponent(
        value, mantissa_bits=12, exp_min=-8, exp_max=7, reserved=_SFLOAT_RESERVED_MANTISSAS
    )
    return ((exponent & 0x0F) << 12) | (mantissa & 0x0FFF)


def float_raw(value: Number) -> int:
    """The 32-bit FLOAT of ``value`` as an unsigned integer."""
    special = _special_name(value)
    if special is not None:
        return _FLOAT_SPECIAL_RAW[special]
    mantissa, exponent = _mantissa_exponent(
        value, mantissa_bits=24, exp_min=-128, exp_max=127, reserved=_FLOAT_RESERVED_MANTISSAS
    )
    return ((exponent & 0xFF) << 24) | (mantissa & 0x00FFFFFF)


def encode_sfloat(value: Number) -> bytes:
    """SFLOAT (IEEE 11073-20601 F.8): 4-bit signed exponent, 12-bit signed mantissa, little-endian.

    ``value`` may be a number, ``float('nan')``/``±inf``, or a special name (``NAN``, ``NRES``, ...).
    Values with more digits than 12 bits hold are rounded half-even to the nearest representable one.
    """
    return sfloat_raw(value).to_bytes(2, "little")


def encode_float(value: Number) -> bytes:
    """FLOAT (IEEE 11073-20601 F.7): 8-bit signed exponent, 24-bit signed mantissa, little-endian."""
    return float_raw(value).to_bytes(4, "little")


def sfloat_from_parts(mantissa: int, exponent: int) -> bytes:
    """An SFLOAT built from its raw parts (for vectors that need an exact bit pattern)."""
    if not (-2048 <= mantissa <= 2047 and -8 <= exponent <= 7):
        raise EncodeError(f"mantissa {mantissa} / exponent {exponent} out of range")
    return (((exponent & 0x0F) << 12) | (mantissa & 0x0FFF)).to_bytes(2, "little")


# --- Date Time and Current Time (GATT Specification Supplement) --------------------------------


def encode_date_time_fields(year: int, month: int, day: int, hours: int, minutes: int, seconds: int) -> bytes:
    """Date Time (0x2A08) from raw fields: year 0 / month 0 / day 0 mean unknown."""
    if not (0 <= year <= 9999 and 0 <= month <= 12 and 0 <= day <= 31):
        raise EncodeError(f"date {year}-{month}-{day} out of range")
    if not (0 <= hours <= 23 and 0 <= minutes <= 59 and 0 <= seconds <= 59):
        raise EncodeError(f"time {hours}:{minutes}:{seconds} out of range")
    return struct.pack("<HBBBBB", year, month, day, hours, minutes, seconds)


def encode_date_time(dt: datetime | None) -> bytes:
    """Date Time (7 bytes); None is the all-zero "unknown" a device with an unset clock may send."""
    if dt is None:
        return bytes(7)
    return encode_date_time_fields(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)


def encode_current_time(dt: datetime, *, adjust_reason: int = 0, fractions256: int | None = None) -> bytes:
    """Current Time (0x2A2B, 10 bytes): Date Time, day of week (1 = Monday … 7 = Sunday),
    fractions of a second in 1/256, adjust reason bits (manual, reference, zone, DST)."""
    fractions = fractions256 if fractions256 is not None else dt.microsecond * 256 // 1_000_000
    return encode_date_time(dt) + bytes([dt.isoweekday(), fractions & 0xFF, adjust_reason & 0xFF])


def parse_current_time(data: bytes) -> datetime | None:
    """What a peripheral does with a Current Time write: the written time, None if the date is unknown.

    Raises EncodeError (the peripheral's "value not allowed") on a wrong length or impossible date.
    """
    if len(data) != 10:
        raise EncodeError(f"current time is 10 bytes, got {len(data)}")
    year, month, day, hours, minutes, seconds = struct.unpack_from("<HBBBBB", data)
    if year == 0 or month == 0 or day == 0:
        return None
    try:
        return datetime(year, month, day, hours, minutes, seconds, data[8] * 1_000_000 // 256)
    except ValueError as err:
        raise EncodeError(f"current time: {err}") from None


def encode_battery_level(percent: int) -> bytes:
    """Battery Level (0x2A19): uint8 percent."""
    if not 0 <= percent <= 100:
        raise EncodeError(f"battery level {percent} not in 0..100")
    return bytes([percent])


# --- Blood Pressure (BLS 1.1 section 3.1) -------------------------------------------------------

BP_STATUS_BITS = {
    "body_movement": 0x0001,
    "cuff_too_loose": 0x0002,
    "irregular_pulse": 0x0004,
    "pulse_rate_above_range": 0x0008,  # bits 3-4 = 01
    "pulse_rate_below_range": 0x0010,  # bits 3-4 = 10
    "improper_position": 0x0020,
}


def bp_status(*names: str) -> int:
    """The Measurement Status word for the named conditions (names as in specs/metrics.md)."""
    status = 0
    for name in names:
        status |= BP_STATUS_BITS[name]
    return status


def encode_bp_measurement(
    systolic: Number,
    diastolic: Number,
    mean_arterial: Number,
    *,
    unit: str = "mmHg",
    timestamp: datetime | bytes | None = None,
    pulse: Number | None = None,
    user_id: int | None = None,
    status: int | None = None,
    extra_flags: int = 0,
) -> bytes:
    """Blood Pressure Measurement (0x2A35).

    ``unit`` "mmHg" or "kPa" (flag bit 0); ``timestamp`` a datetime, or 7 raw Date Time bytes for a
    partially unknown date; ``user_id`` 0..255 (0xFF = unknown user); ``status`` the 16-bit
    measurement status (see :func:`bp_status`); ``extra_flags`` sets flag bits newer revisions define
    (bits 5-7), which a reader must ignore.
    """
    if unit not in ("mmHg", "kPa"):
        raise EncodeError(f"blood pressure unit {unit!r}: mmHg or kPa")
    flags = (0x01 if unit == "kPa" else 0) | (extra_flags & 0xE0)
    body = encode_sfloat(systolic) + encode_sfloat(diastolic) + encode_sfloat(mean_arterial)
    if timestamp is not None:
        flags |= 0x02
        body += timestamp if isinstance(timestamp, bytes) else encode_date_time(timestamp)
    if pulse is not None:
        flags |= 0x04
        body += encode_sfloat(pulse)
    if user_id is not None:
        flags |= 0x08
        body += bytes([user_id & 0xFF])
    if status is not None:
        flags |= 0x10
        body += struct.pack("<H", status)
    return bytes([flags]) + body


def encode_intermediate_cuff_pressure(
    cuff_pressure: Number,
    *,
    unit: str = "mmHg",
    timestamp: datetime | None = None,
    pulse: Number | None = None,
    user_id: int | None = None,
    status: int | None = None,
) -> bytes:
    """Intermediate Cuff Pressure (0x2A36): the measurement layout, diastolic and MAP sent as NaN."""
    return encode_bp_measurement(
        cuff_pressure, NAN, NAN, unit=unit, timestamp=timestamp, pulse=pulse, user_id=user_id, status=status
    )


def encode_bp_feature(
    *,
    body_movement: bool = True,
    cuff_fit: bool = True,
    irregular_pulse: bool = True,
    pulse_rate_range: bool = True,
    measurement_position: bool = True,
    multiple_bond: bool = False,
) -> bytes:
    """Blood Pressure Feature (0x2A49), uint16: bits 0-5 the detections the cuff supports."""
    bits = [body_movement, cuff_fit, irregular_pulse, pulse_rate_range, measurement_position, multiple_bond]
    return struct.pack("<H", sum(1 << i for i, on in enumerate(bits) if on))


# --- Glucose (GLS 1.0 sections 3.106, 3.107) ----------------------------------------------------

GLUCOSE_STATUS_BITS = {
    "device_battery_low": 0,
    "sensor_malfunction": 1,
    "sample_size_insufficient": 2,
    "strip_insertion_error": 3,
    "strip_type_incorrect": 4,
    "result_above_range": 5,
    "result_below_range": 6,
    "temperature_too_high": 7,
    "temperature_too_low": 8,
    "strip_pulled_too_soon": 9,
    "device_fault": 10,
    "time_fault": 11,
}

SAMPLE_CONTROL_SOLUTION = 10
LOCATION_CONTROL_SOLUTION = 4
LOCATION_NOT_AVAILABLE = 15


def glucose_status(*names: str) -> int:
    """The Sensor Status Annunciation word for the named conditions."""
    status = 0
    for name in names:
        status |= 1 << GLUCOSE_STATUS_BITS[name]
    return status


def encode_glucose_measurement(
    sequence: int,
    base_time: datetime | None,
    *,
    time_offset: int | None = None,
    concentration: Number | None = None,
    unit: str = "kg/L",
    sample_type: int = 1,
    sample_location: int = 1,
    status: int | None = None,
    context_follows: bool = False,
) -> bytes:
    """Glucose Measurement (0x2A18).

    ``base_time`` None sends an all-zero (unknown) Date Time; ``time_offset`` minutes (sint16);
    ``concentration`` in ``unit`` ("kg/L": 95 mg/dL is 0.00095; "mol/L": 5.3 mmol/L is 0.0053), with
    the type (low nibble) / location (high nibble) byte; ``status`` the sensor status annunciation.
    """
    if unit not in ("kg/L", "mol/L"):
        raise EncodeError(f"glucose unit {unit!r}: kg/L or mol/L")
    if not 0 <= sequence <= 0xFFFF:
        raise EncodeError(f"sequence {sequence} is not a uint16")
    flags = 0
    body = struct.pack("<H", sequence) + encode_date_time(base_time)
    if time_offset is not None:
        flags |= 0x01
        body += struct.pack("<h", time_offset)
    if concentration is not None:
        flags |= 0x02
        if unit == "mol/L":
            flags |= 0x04
        body += encode_sfloat(concentration) + bytes([(sample_type & 0x0F) | ((sample_location & 0x0F) << 4)])
    if status is not None:
        flags |= 0x08
        body += struct.pack("<H", status)
    if context_follows:
        flags |= 0x10
    return bytes([flags]) + body


def encode_glucose_context(
    sequence: int,
    *,
    carbohydrate: tuple[int, Number] | None = None,
    meal: int | None = None,
    tester: int | None = None,
    health: int | None = None,
    exercise: tuple[int, int] | None = None,
    medication: tuple[int, Number] | None = None,
    medication_unit: str = "kg",
    hba1c: Number | None = None,
    extended_flags: int | None = None,
) -> bytes:
    """Glucose Measurement Context (0x2A34), GLS 1.0 section 3.107.

    Field order: flags, sequence number, extended flags (bit 7), carbohydrate id + carbohydrate
    SFLOAT in kilograms (bit 0; give grams here, e.g. ``(1, 50)`` is breakfast 50 g = 0.05 kg), meal
    (bit 1), tester (low nibble) / health (high nibble) (bit 2), exercise duration in seconds (uint16)
    + intensity % (bit 3), medication id + medication SFLOAT in kg or litres (bit 4, unit in bit 5;
    give the amount in ``medication_unit``), HbA1c SFLOAT percent (bit 6).
    """
    flags = 0
    body = struct.pack("<H", sequence)
    if extended_flags is not None:
        flags |= 0x80
        body += bytes([extended_flags & 0xFF])
    if carbohydrate is not None:
        flags |= 0x01
        carb_id, grams = carbohydrate
        # Decimal keeps 50 g as exactly 0.05 kg so the SFLOAT is 5e-2, not a rounded binary fraction.
        kilograms: Number = grams if isinstance(grams, str) else float(Decimal(repr(float(grams))) / 1000)
        body += bytes([carb_id & 0xFF]) + encode_sfloat(kilograms)
    if meal is not None:
        flags |= 0x02
        body += bytes([meal & 0xFF])
    if tester is not None or health is not None:
        flags |= 0x04
        body += bytes([((tester or 0) & 0x0F) | (((health or 0) & 0x0F) << 4)])
    if exercise is not None:
        flags |= 0x08
        duration_s, intensity = exercise
        body += struct.pack("<HB", duration_s, intensity)
    if medication is not None:
        if medication_unit not in ("kg", "L"):
            raise EncodeError(f"medication unit {medication_unit!r}: kg or L")
        flags |= 0x10
        if medication_unit == "L":
            flags |= 0x20
        med_id, amount = medication
        body += bytes([med_id & 0xFF]) + encode_sfloat(amount)
    if hba1c is not None:
        flags |= 0x40
        body += encode_sfloat(hba1c)
    return bytes([flags]) + body


def encode_glucose_feature(*names: str) -> bytes:
    """Glucose Feature (0x2A51), uint16. Bit names as GLS 1.0 section 3.105 lists them."""
    bits = {
        "low_battery_detection": 0, "sensor_malfunction_detection": 1, "sensor_sample_size": 2,
        "sensor_strip_insertion_error": 3, "sensor_strip_type_error": 4, "sensor_result_high_low": 5,
        "sensor_temperature_high_low": 6, "sensor_read_interrupt": 7, "general_device_fault": 8,
        "time_fault": 9, "multiple_bond": 10,
    }
    return struct.pack("<H", sum(1 << bits[n] for n in names))


# --- Record Access Control Point (GLS 1.0 section 3.108, 4.9) ------------------------------------

RACP_REPORT_STORED_RECORDS = 1
RACP_DELETE_STORED_RECORDS = 2
RACP_ABORT = 3
RACP_REPORT_NUMBER_OF_RECORDS = 4
RACP_NUMBER_OF_RECORDS_RESPONSE = 5
RACP_RESPONSE_CODE = 6

OPERATOR_NULL = 0
OPERATOR_ALL = 1
OPERATOR_LESS_OR_EQUAL = 2
OPERATOR_GREATER_OR_EQUAL = 3
OPERATOR_WITHIN_RANGE = 4
OPERATOR_FIRST = 5
OPERATOR_LAST = 6

FILTER_SEQUENCE_NUMBER = 1
FILTER_USER_FACING_TIME = 2

RESPONSE_SUCCESS = 1
RESPONSE_OP_CODE_NOT_SUPPORTED = 2
RESPONSE_INVALID_OPERATOR = 3
RESPONSE_OPERATOR_NOT_SUPPORTED = 4
RESPONSE_INVALID_OPERAND = 5
RESPONSE_NO_RECORDS_FOUND = 6
RESPONSE_ABORT_UNSUCCESSFUL = 7
RESPONSE_PROCEDURE_NOT_COMPLETED = 8
RESPONSE_OPERAND_NOT_SUPPORTED = 9


def encode_racp_response(request_op_code: int, response_value: int) -> bytes:
    """RACP Response Code: op 6, operator null, operand = request op code + response value."""
    return bytes([RACP_RESPONSE_CODE, OPERATOR_NULL, request_op_code & 0xFF, response_value & 0xFF])


def encode_racp_number_of_records(count: int) -> bytes:
    """RACP Number of Stored Records Response: op 5, operator null, uint16 count."""
    return bytes([RACP_NUMBER_OF_RECORDS_RESPONSE, OPERATOR_NULL]) + struct.pack("<H", count)


def encode_racp_request(op_code: int, operator: int, operand: bytes = b"") -> bytes:
    """An RACP request as a collector writes it (used by tests that drive a peripheral directly)."""
    return bytes([op_code & 0xFF, operator & 0xFF]) + operand


def encode_racp_report_greater_or_equal(sequence: int) -> bytes:
    """"Report stored records with sequence ≥ n": ``01 03 01 <uint16>``."""
    operand = bytes([FILTER_SEQUENCE_NUMBER]) + struct.pack("<H", sequence)
    return encode_racp_request(RACP_REPORT_STORED_RECORDS, OPERATOR_GREATER_OR_EQUAL, operand)


# --- Weight Scale (WSS 1.0 section 3.2) ---------------------------------------------------------

WEIGHT_UNSUCCESSFUL = 0xFFFF


def _scaled_uint16(value: float, resolution: float, name: str) -> int:
    raw = round(value / resolution)
    if not 0 <= raw <= 0xFFFF:
        raise EncodeError(f"{name} {value} does not fit a uint16 at resolution {resolution}")
    return raw


def encode_weight_measurement(
    weight: float | None,
    *,
    imperial: bool = False,
    timestamp: datetime | None = None,
    user_id: int | None = None,
    bmi: float | None = None,
    height: float | None = None,
) -> bytes:
    """Weight Measurement (0x2A9D).

    ``weight`` in kg (resolution 0.005) or, ``imperial``, lb (0.01); None sends 0xFFFF, "measurement
    unsuccessful". ``bmi`` (0.1 kg/m²) and ``height`` (SI 0.001 m, imperial 0.1 in) share flag bit 3,
    so both or neither.
    """
    if (bmi is None) != (height is None):
        raise EncodeError("bmi and height share one flag bit: give both or neither")
    flags = 0x01 if imperial else 0
    resolution = 0.01 if imperial else 0.005
    raw_weight = WEIGHT_UNSUCCESSFUL if weight is None else _scaled_uint16(weight, resolution, "weight")
    if raw_weight == WEIGHT_UNSUCCESSFUL and weight is not None:
        raise EncodeError(f"weight {weight} encodes as 0xFFFF, which means unsuccessful")
    body = struct.pack("<H", raw_weight)
    if timestamp is not None:
        flags |= 0x02
        body += encode_date_time(timestamp)
    if user_id is not None:
        flags |= 0x04
        body += bytes([user_id & 0xFF])
    if bmi is not None and height is not None:
        flags |= 0x08
        body += struct.pack(
            "<HH", _scaled_uint16(bmi, 0.1, "bmi"), _scaled_uint16(height, 0.1 if imperial else 0.001, "height")
        )
    return bytes([flags]) + body


def encode_weight_feature(
    *,
    timestamp: bool = True,
    multiple_users: bool = True,
    bmi: bool = True,
    weight_resolution: int = 0,
    height_resolution: int = 0,
) -> bytes:
    """Weight Scale Feature (0x2A9E), uint32: bits 0-2 supported fields, bits 3-6 weight resolution
    code, bits 7-9 height resolution code (0 = not specified)."""
    value = int(timestamp) | int(multiple_users) << 1 | int(bmi) << 2
    value |= (weight_resolution & 0x0F) << 3 | (height_resolution & 0x07) << 7
    return struct.pack("<I", value)


# --- Heart Rate (HRS 1.0 section 3.1) ----------------------------------------------------------


def encode_heart_rate(
    bpm: int,
    *,
    uint16: bool = False,
    contact: bool | None = None,
    energy: int | None = None,
    rr: Sequence[int] | Iterable[int] = (),
) -> bytes:
    """Heart Rate Measurement (0x2A37).

    ``contact`` None: contact detection not supported (bits 1-2 = 00); True: supported and detected
    (11); False: supported, no contact (10). ``energy`` kJ (uint16). ``rr`` RR intervals in the
    wire's 1/1024 s units; a frame carries them all after the other fields.
    """
    if uint16:
        if not 0 <= bpm <= 0xFFFF:
            raise EncodeError(f"heart rate {bpm} is not a uint16")
        flags, body = 0x01, struct.pack("<H", bpm)
    else:
        if not 0 <= bpm <= 0xFF:
            raise EncodeError(f"heart rate {bpm} does not fit uint8; pass uint16=True")
        flags, body = 0x00, bytes([bpm])
    if contact is not None:
        flags |= 0x06 if contact else 0x04
    if energy is not None:
        flags |= 0x08
        body += struct.pack("<H", energy)
    intervals = list(rr)
    if intervals:
        flags |= 0x10
        body += b"".join(struct.pack("<H", interval) for interval in intervals)
    return bytes([flags]) + body


def rr_units(seconds: float) -> int:
    """An RR interval in seconds as the wire's 1/1024 s units."""
    return round(seconds * 1024)
