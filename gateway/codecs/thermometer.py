"""Temperature Measurement (0x2A1C), Intermediate Temperature (0x2A1E) and Temperature Type (0x2A1D).

Bluetooth SIG Health Thermometer Service 1.0 (HTS, 0x1809), section 3.1 (measurement), 3.2
(temperature type) and 3.3 (intermediate temperature, same layout); field formats from the GATT
Specification Supplement. Flags: bit 0 unit (0 Celsius, 1 Fahrenheit), bit 1 time stamp, bit 2
temperature type; bits 3-7 are reserved and ignored. The temperature is an IEEE 11073 FLOAT.

The value stays in the unit the flag names (``Cel`` or ``[degF]``); normalisation converts to Cel and
keeps the original. The temperature type (where the frame or the Temperature Type characteristic
says it) is the measurement site: it becomes the FHIR Observation's body site.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.codecs.common import InvalidFieldError, Measurement, Quantity, Reader
from gateway.codecs.ieee11073 import read_date_time_fields, read_float

PROFILE = "ble.thermometer"
INTERMEDIATE_PROFILE = "ble.intermediate_temperature"
KIND = "body_temperature"

UNIT_FAHRENHEIT = 0x01
TIME_STAMP = 0x02
TEMPERATURE_TYPE = 0x04
ABSOLUTE_ZERO_CEL = -273.15
ABSOLUTE_ZERO_DEGF = -459.67

# GATT Specification Supplement, Temperature Type (0x2A1D); 0 and 10-255 are reserved.
TEMPERATURE_TYPES: dict[int, str] = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastro_intestinal_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


def temperature_type_name(code: int) -> str:
    # A reserved code is a newer device's business, not an error: keep the number visible.
    return TEMPERATURE_TYPES.get(code, f"reserved_{code}")


def decode_measurement(data: bytes, *, profile: str = PROFILE) -> Measurement:
    """Decode a Temperature Measurement (HTS 1.0 section 3.1): ``body_temperature`` as ``Cel`` or
    ``[degF]``; ``details["temperature_type"]`` names the site where the frame carries it. A NaN/NRes
    temperature leaves no value and flags ``measurement_unsuccessful``; +/-INFINITY (a reading out of the
    sensor's range) does the same, with its special kept in ``details``."""
    reader = Reader(data)
    flags = reader.u8("flags")
    unit = "[degF]" if flags & UNIT_FAHRENHEIT else "Cel"
    temperature_at = reader.pos
    temperature = read_float(reader, "temperature")
    details: dict[str, Any] = {"unit_flag": unit}
    device_time = None
    if flags & TIME_STAMP:
        fields, device_time = read_date_time_fields(reader, "time stamp")
        if device_time is None:
            details["device_time_partial"] = str(fields)
    if flags & TEMPERATURE_TYPE:
        code = reader.u8("temperature type")
        if code == 0:
            # 0 is reserved and no device means "unknown" by it; keep it visible but take no site from it.
            details["temperature_type"] = "reserved_0"
        else:
            details["temperature_type"] = temperature_type_name(code)
        details["temperature_type_code"] = code
    values: dict[str, Quantity] = {}
    status: list[str] = []
    if temperature.is_finite and temperature.value is not None:
        if temperature.value < (ABSOLUTE_ZERO_DEGF if unit == "[degF]" else ABSOLUTE_ZERO_CEL):
            raise InvalidFieldError("temperature", temperature_at,
                                    f"{temperature.value:g} {unit} is below absolute zero")
        values["body_temperature"] = Quantity(temperature.value, unit)
    else:
        if temperature.special is not None:
            details["body_temperature_special"] = temperature.special.value
        status.append("measurement_unsuccessful")
    if profile == INTERMEDIATE_PROFILE:
        status.insert(0, "intermediate")
    return Measurement(
        profile=profile,
        kind=KIND,
        values=values,
        device_time=device_time,
        flags=tuple(status),
        raw=bytes(data),
        details=details,
    )


def decode_intermediate_temperature(data: bytes) -> Measurement:
    """Intermediate Temperature (0x2A1E, HTS 1.0 section 3.3): the measurement layout, flagged
    ``intermediate`` because it is a value on its way, never a final reading."""
    return decode_measurement(data, profile=INTERMEDIATE_PROFILE)


def decode_temperature_type(data: bytes) -> str:
    """Temperature Type (0x2A1D): one uint8; the site's name (``reserved_N`` for reserved codes)."""
    reader = Reader(data)
    code = reader.u8("temperature type")
    if reader.remaining:
        raise InvalidFieldError("temperature type", 1, f"{reader.remaining} byte(s) after the uint8")
    return temperature_type_name(code)


def with_temperature_type(measurement: Measurement, site: str | None) -> Measurement:
    """The measurement with the device's fixed Temperature Type as its site, where the frame named none
    (HTS 1.0 section 3.2: a device whose type is fixed puts it in 0x2A1D instead of in each frame)."""
    if site is None or "temperature_type" in measurement.details:
        return measurement
    return replace(measurement, details={**measurement.details, "temperature_type": site,
                                         "temperature_type_source": "0x2A1D"})
