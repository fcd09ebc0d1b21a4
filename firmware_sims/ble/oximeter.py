"""A simulated pulse oximeter: Pulse Oximeter Service (PLXS 1.0, 0x1822), byte-exact from the spec.

Encoders (PLXS 1.0 sections 3.1-3.3, summarised in ``specs/ble-gatt.md``): PLX Spot-Check
Measurement (0x2A5E), PLX Continuous Measurement (0x2A5F), PLX Features (0x2A60). Numbers and times
come from ``firmware_sims.ble.encoders`` (an independent reading of IEEE 11073-20601); nothing here
imports the gateway.

The peripheral keeps spot-check records in memory and reports them through the Record Access
Control Point (PLXS 1.0 section 3.4: only the "all records" operator is defined, because spot-check
records carry no sequence number to filter on); a device without storage indicates its records as
soon as the central subscribes. While a central is subscribed to the continuous characteristic, it
notifies ``stream`` samples at ``hz``.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.gatt import RACP, Characteristic, Link, Service, uuid16
from firmware_sims.ble.racp import RacpServer

PULSE_OXIMETER_SERVICE = uuid16(0x1822)
PLX_SPOT_CHECK = uuid16(0x2A5E)
PLX_CONTINUOUS = uuid16(0x2A5F)
PLX_FEATURES = uuid16(0x2A60)

# Measurement Status (uint16) bit positions, PLXS 1.0 section 3.1.1.3.
MEASUREMENT_STATUS = {
    "measurement_ongoing": 5, "early_estimated_data": 6, "validated_data": 7, "fully_qualified_data": 8,
    "data_from_measurement_storage": 9, "data_for_demonstration": 10, "data_for_testing": 11,
    "calibration_ongoing": 12, "measurement_unavailable": 13, "questionable_measurement_detected": 14,
    "invalid_measurement_detected": 15,
}
# Device and Sensor Status (uint24) bit positions, PLXS 1.0 section 3.1.1.4.
DEVICE_SENSOR_STATUS = {
    "extended_display_update_ongoing": 0, "equipment_malfunction_detected": 1,
    "signal_processing_irregularity_detected": 2, "inadequate_signal_detected": 3, "poor_signal_detected": 4,
    "low_perfusion_detected": 5, "erratic_signal_detected": 6, "nonpulsatile_signal_detected": 7,
    "questionable_pulse_detected": 8, "signal_analysis_ongoing": 9, "sensor_interference_detected": 10,
    "sensor_unconnected_to_user": 11, "unknown_sensor_connected": 12, "sensor_displaced": 13,
    "sensor_malfunctioning": 14, "sensor_disconnected": 15,
}
# PLX Features (uint16) bit positions, PLXS 1.0 section 3.3.
FEATURES = {
    "measurement_status_support": 0, "device_and_sensor_status_support": 1,
    "measurement_storage_for_spot_check": 2, "timestamp_for_spot_check": 3, "spo2pr_fast": 4,
    "spo2pr_slow": 5, "pulse_amplitude_index": 6, "multiple_bonds": 7,
}


def _bits(table: dict[str, int], names: tuple[str, ...], width: int) -> int:
    value = 0
    for name in names:
        if name not in table:
            raise enc.EncodeError(f"unknown status bit {name!r}; known: {', '.join(table)}")
        value |= 1 << table[name]
    return value & ((1 << width) - 1)


def measurement_status(*names: str) -> int:
    return _bits(MEASUREMENT_STATUS, names, 16)


def device_sensor_status(*names: str) -> int:
    return _bits(DEVICE_SENSOR_STATUS, names, 24)


def _uint24(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFF:
        raise enc.EncodeError(f"{value} is not a uint24")
    return value.to_bytes(3, "little")


def _status_and_pai(status: int | None, sensor_status: int | None, pulse_amplitude_index: enc.Number | None) -> bytes:
    """The fields both PLX measurements end with, in this order where present (PLXS 1.0 3.1.1, 3.2.1):
    measurement status (uint16), device and sensor status (uint24), pulse amplitude index (SFLOAT)."""
    out = b""
    if status is not None:
        out += struct.pack("<H", status)
    if sensor_status is not None:
        out += _uint24(sensor_status)
    if pulse_amplitude_index is not None:
        out += enc.encode_sfloat(pulse_amplitude_index)
    return out


def encode_spot_check(
    spo2: enc.Number,
    pulse_rate: enc.Number,
    *,
    timestamp: datetime | None = None,
    status: int | None = None,
    sensor_status: int | None = None,
    pulse_amplitude_index: enc.Number | None = None,
    clock_not_set: bool = False,
) -> bytes:
    """PLX Spot-Check Measurement (0x2A5E): flags, SpO2 and PR (SFLOAT), then the optional fields in
    the order the flags list them: time stamp (bit 0), measurement status (bit 1), device and sensor
    status (bit 2), pulse amplitude index (bit 3); bit 4 says the device clock is not set."""
    flags = (
        (0x01 if timestamp is not None else 0) | (0x02 if status is not None else 0)
        | (0x04 if sensor_status is not None else 0) | (0x08 if pulse_amplitude_index is not None else 0)
        | (0x10 if clock_not_set else 0)
    )
    out = bytes([flags]) + enc.encode_sfloat(spo2) + enc.encode_sfloat(pulse_rate)
    if timestamp is not None:
        out += enc.encode_date_time(timestamp)
    return out + _status_and_pai(status, sensor_status, pulse_amplitude_index)


def encode_continuous(
    spo2: enc.Number,
    pulse_rate: enc.Number,
    *,
    fast: tuple[enc.Number, enc.Number] | None = None,
    slow: tuple[enc.Number, enc.Number] | None = None,
    status: int | None = None,
    sensor_status: int | None = None,
    pulse_amplitude_index: enc.Number | None = None,
) -> bytes:
    """PLX Continuous Measurement (0x2A5F): flags, SpO2PR-Normal, then SpO2PR-Fast (bit 0), SpO2PR-Slow
    (bit 1), measurement status (bit 2), device and sensor status (bit 3), pulse amplitude index (bit 4)."""
    flags = (
        (0x01 if fast is not None else 0) | (0x02 if slow is not None else 0) | (0x04 if status is not None else 0)
        | (0x08 if sensor_status is not None else 0) | (0x10 if pulse_amplitude_index is not None else 0)
    )
    out = bytes([flags]) + enc.encode_sfloat(spo2) + enc.encode_sfloat(pulse_rate)
    for pair in (fast, slow):
        if pair is not None:
            out += enc.encode_sfloat(pair[0]) + enc.encode_sfloat(pair[1])
    return out + _status_and_pai(status, sensor_status, pulse_amplitude_index)


def encode_features(
    *names: str, supported_status: int | None = None, supported_sensor_status: int | None = None
) -> bytes:
    """PLX Features (0x2A60): uint16 feature bits, then the supported measurement status (uint16) and
    supported device and sensor status (uint24) where bits 0 and 1 announce them."""
    bits = _bits(FEATURES, names, 16)
    if supported_status is not None:
        bits |= 1 << FEATURES["measurement_status_support"]
    if supported_sensor_status is not None:
        bits |= 1 << FEATURES["device_and_sensor_status_support"]
    out = struct.pack("<H", bits)
    if bits & 0x01:
        out += struct.pack("<H", supported_status or 0)
    if bits & 0x02:
        out += _uint24(supported_sensor_status or 0)
    return out


@dataclass
class SpotCheckRecord:
    spo2: enc.Number
    pulse_rate: enc.Number
    timestamp: datetime | None = None
    status: int | None = None
    sensor_status: int | None = None
    pulse_amplitude_index: enc.Number | None = None
    clock_not_set: bool = False
    raw: str | None = None
    """Hex sent instead of the encoded record: a record the device's own memory holds broken."""

    def encode(self) -> bytes:
        if self.raw is not None:
            return bytes.fromhex(self.raw)
        return encode_spot_check(
            self.spo2, self.pulse_rate, timestamp=self.timestamp, status=self.status,
            sensor_status=self.sensor_status, pulse_amplitude_index=self.pulse_amplitude_index,
            clock_not_set=self.clock_not_set,
        )


@dataclass
class ContinuousSample:
    spo2: enc.Number
    pulse_rate: enc.Number
    status: int | None = None
    sensor_status: int | None = None
    pulse_amplitude_index: enc.Number | None = None

    def encode(self) -> bytes:
        return encode_continuous(self.spo2, self.pulse_rate, status=self.status, sensor_status=self.sensor_status,
                                 pulse_amplitude_index=self.pulse_amplitude_index)


class PulseOximeter(RacpServer):
    """PLXS 1.0 with stored spot-check records behind an RACP and an optional live continuous stream.

    ``stream`` samples are cycled at ``hz`` while the central is subscribed to 0x2A5F; ``frames``
    bounds them (then the oximeter, taken off the finger, ends the link). With ``storage=False`` the
    records are indicated on subscription to 0x2A5E and the link ends, like a cuff.
    """

    profile = "ble.pulse_oximeter"
    primary_service = PULSE_OXIMETER_SERVICE

    def __init__(self, address: str, records: list[SpotCheckRecord] | None = None, *,
                 stream: list[ContinuousSample] | None = None, hz: float = 1.0, frames: int | None = None,
                 storage: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-PLX")
        kwargs.setdefault("has_current_time", False)
        super().__init__(address, **kwargs)
        self.records = list(records or [])
        self.stream = list(stream or [])
        self.hz = hz
        self.frames = frames
        self.storage = storage
        self.sent_frames: list[bytes] = []

    def profile_services(self) -> list[Service]:
        features = ["spo2pr_fast", "pulse_amplitude_index", "timestamp_for_spot_check"]
        if self.storage:
            features.append("measurement_storage_for_spot_check")
        characteristics = [
            Characteristic(PLX_SPOT_CHECK, ["indicate"]),
            Characteristic(PLX_FEATURES, ["read"], encode_features(
                *features, supported_status=measurement_status("invalid_measurement_detected",
                                                               "questionable_measurement_detected"),
                supported_sensor_status=device_sensor_status("low_perfusion_detected", "sensor_displaced"))),
        ]
        if self.stream:
            characteristics.append(Characteristic(PLX_CONTINUOUS, ["notify"]))
        if self.storage:
            characteristics.append(Characteristic(RACP, ["write", "indicate"], on_write=self._racp_write))
        return [Service(PULSE_OXIMETER_SERVICE, characteristics)]

    def on_subscribe(self, link: Link, uuid: str) -> None:
        if self.faults.silent_after_connect:
            return
        if uuid == PLX_CONTINUOUS:
            self.spawn(self._notify_stream(link))
        elif uuid == PLX_SPOT_CHECK and not self.storage:
            self.spawn(self._indicate_records(link, disconnect=True))

    async def _indicate_records(self, link: Link, *, disconnect: bool) -> None:
        for index, record in enumerate(self.records):
            faults = self.faults
            if faults.drop_after_records is not None and faults.drop_times > 0 and index == faults.drop_after_records:
                faults.drop_times -= 1
                link.drop()
                return
            frame = faults.garbage_frame if faults.garbage_at_record == index else record.encode()
            self.sent_frames.append(frame)
            await link.send(PLX_SPOT_CHECK, frame)
        if disconnect:
            await asyncio.sleep(0.01)
            link.drop()

    async def _notify_stream(self, link: Link) -> None:
        counter = range(self.frames) if self.frames is not None else itertools.count()
        samples = itertools.cycle(self.stream)
        for index in counter:
            sample = next(samples)
            frame = self.faults.garbage_frame if self.faults.garbage_at_record == index else sample.encode()
            self.sent_frames.append(frame)
            await link.send(PLX_CONTINUOUS, frame)
            await asyncio.sleep(1 / self.hz)
        link.drop()

    def _select(self, operator: int, operand: bytes) -> tuple[list[SpotCheckRecord], int | None]:
        if operator == enc.OPERATOR_NULL:
            return [], enc.RESPONSE_INVALID_OPERATOR
        if operator != enc.OPERATOR_ALL:
            # PLXS 1.0 3.4: "all records" is the only operator; there is nothing to filter records by.
            return [], enc.RESPONSE_OPERATOR_NOT_SUPPORTED
        if operand:
            return [], enc.RESPONSE_INVALID_OPERAND
        return list(self.records), None

    def _delete(self, selected: list[SpotCheckRecord]) -> None:
        self.records = []  # "all records" is the only selection

    async def _report(self, link: Link, op: int, selected: list[SpotCheckRecord]) -> None:
        before = len(self.sent_frames)
        await self._indicate_records(link, disconnect=False)
        if len(self.sent_frames) - before == len(selected) and link.connected:
            await link.send(RACP, enc.encode_racp_response(op, enc.RESPONSE_SUCCESS))
