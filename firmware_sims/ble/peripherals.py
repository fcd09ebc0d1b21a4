"""Simulated health peripherals: blood-pressure cuff, glucose meter (RACP), weight scale, heart-rate strap.

Each behaves as the Bluetooth SIG profile describes and as real devices do: a cuff or scale sends
its stored measurements as indications once the central subscribes and then ends the link; a
glucose meter answers Record Access Control Point requests with notifications and a final
indication; a strap notifies live heart rate until the link ends. Frames come from
``firmware_sims.ble.encoders`` only.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.gatt import (
    BLOOD_PRESSURE_SERVICE,
    BODY_SENSOR_LOCATION,
    BP_FEATURE,
    BP_MEASUREMENT,
    GLUCOSE_CONTEXT,
    GLUCOSE_FEATURE,
    GLUCOSE_MEASUREMENT,
    GLUCOSE_SERVICE,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    INTERMEDIATE_CUFF_PRESSURE,
    RACP,
    WEIGHT_FEATURE,
    WEIGHT_MEASUREMENT,
    WEIGHT_SCALE_SERVICE,
    Characteristic,
    Link,
    Peripheral,
    Service,
)
from firmware_sims.ble.racp import RacpServer

# Pause before a cuff or scale ends the link after its last record (devices linger a moment).
LINGER_S = 0.01


@dataclass
class BpRecord:
    systolic: enc.Number
    diastolic: enc.Number
    mean_arterial: enc.Number
    timestamp: datetime | None = None
    pulse: enc.Number | None = None
    user_id: int | None = None
    status: int | None = None

    def encode(self, unit: str) -> bytes:
        return enc.encode_bp_measurement(
            self.systolic, self.diastolic, self.mean_arterial, unit=unit, timestamp=self.timestamp,
            pulse=self.pulse, user_id=self.user_id, status=self.status,
        )


@dataclass
class WeightRecord:
    weight: float | None
    timestamp: datetime | None = None
    user_id: int | None = None
    bmi: float | None = None
    height: float | None = None

    def encode(self, imperial: bool) -> bytes:
        return enc.encode_weight_measurement(
            self.weight, imperial=imperial, timestamp=self.timestamp, user_id=self.user_id, bmi=self.bmi,
            height=self.height,
        )


@dataclass
class GlucoseRecord:
    sequence: int
    base_time: datetime | None
    concentration: enc.Number | None = None
    unit: str = "kg/L"
    time_offset: int | None = None
    sample_type: int = 1
    sample_location: int = 1
    status: int | None = None
    context: dict[str, Any] | None = None
    """Keyword arguments of :func:`encoders.encode_glucose_context` (without the sequence)."""

    def encode(self) -> bytes:
        return enc.encode_glucose_measurement(
            self.sequence, self.base_time, time_offset=self.time_offset, concentration=self.concentration,
            unit=self.unit, sample_type=self.sample_type, sample_location=self.sample_location,
            status=self.status, context_follows=self.context is not None,
        )

    def encode_context(self) -> bytes | None:
        if self.context is None:
            return None
        return enc.encode_glucose_context(self.sequence, **self.context)


class _StoredRecordsDevice(Peripheral):
    """A cuff or scale: on subscription to its measurement characteristic, indicate every stored
    record (faults permitting), then end the link as real devices do once their memory is sent."""

    measurement_uuid = ""

    def __init__(self, address: str, *, disconnect_when_done: bool = True, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self.disconnect_when_done = disconnect_when_done
        self.sent_frames: list[bytes] = []

    def stored_frames(self) -> list[bytes]:
        raise NotImplementedError

    def on_subscribe(self, link: Link, uuid: str) -> None:
        if uuid == self.measurement_uuid and not self.faults.silent_after_connect:
            self.spawn(self._send_stored(link))

    async def _send_stored(self, link: Link) -> None:
        for index, frame in enumerate(self.stored_frames()):
            if self._should_drop(index):
                link.drop()
                return
            if self.faults.garbage_at_record == index:
                frame = self.faults.garbage_frame
            self.sent_frames.append(frame)
            await link.send(self.measurement_uuid, frame)
        if self.disconnect_when_done:
            await asyncio.sleep(LINGER_S)
            link.drop()

    def _should_drop(self, sent: int) -> bool:
        faults = self.faults
        if faults.drop_after_records is not None and faults.drop_times > 0 and sent == faults.drop_after_records:
            faults.drop_times -= 1
            return True
        return False


class BloodPressureCuff(_StoredRecordsDevice):
    profile = "ble.blood_pressure"
    primary_service = BLOOD_PRESSURE_SERVICE
    measurement_uuid = BP_MEASUREMENT

    def __init__(self, address: str, records: list[BpRecord] | None = None, *, unit: str = "mmHg",
                 **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-BP")
        super().__init__(address, **kwargs)
        self.records = list(records or [])
        self.unit = unit

    def stored_frames(self) -> list[bytes]:
        return [record.encode(self.unit) for record in self.records]

    def profile_services(self) -> list[Service]:
        return [
            Service(
                BLOOD_PRESSURE_SERVICE,
                [
                    Characteristic(BP_MEASUREMENT, ["indicate"]),
                    Characteristic(INTERMEDIATE_CUFF_PRESSURE, ["notify"]),
                    Characteristic(BP_FEATURE, ["read"], enc.encode_bp_feature(multiple_bond=True)),
                ],
            )
        ]


class WeightScale(_StoredRecordsDevice):
    profile = "ble.weight_scale"
    primary_service = WEIGHT_SCALE_SERVICE
    measurement_uuid = WEIGHT_MEASUREMENT

    def __init__(self, address: str, records: list[WeightRecord] | None = None, *, imperial: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-SCALE")
        super().__init__(address, **kwargs)
        self.records = list(records or [])
        self.imperial = imperial

    def stored_frames(self) -> list[bytes]:
        return [record.encode(self.imperial) for record in self.records]

    def profile_services(self) -> list[Service]:
        return [
            Service(
                WEIGHT_SCALE_SERVICE,
                [
                    Characteristic(WEIGHT_MEASUREMENT, ["indicate"]),
                    Characteristic(WEIGHT_FEATURE, ["read"], enc.encode_weight_feature()),
                ],
            )
        ]


class GlucoseMeter(RacpServer):
    """Glucose Service 1.0 with its Record Access Control Point (GLS section 4.9 and 3.108).

    The collector must enable RACP indications before writing a request (else the meter answers
    "Client Characteristic Configuration Descriptor improperly configured", as GLS 3.108 requires);
    only one procedure runs at a time.
    """

    profile = "ble.glucose"
    primary_service = GLUCOSE_SERVICE

    def __init__(self, address: str, records: list[GlucoseRecord] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-GLUCO")
        super().__init__(address, **kwargs)
        self.records = sorted(records or [], key=lambda r: r.sequence)
        self.sent_sequences: list[int] = []
        self._sent_this_session = 0

    def profile_services(self) -> list[Service]:
        return [
            Service(
                GLUCOSE_SERVICE,
                [
                    Characteristic(GLUCOSE_MEASUREMENT, ["notify"]),
                    Characteristic(GLUCOSE_CONTEXT, ["notify"]),
                    Characteristic(GLUCOSE_FEATURE, ["read"],
                                   enc.encode_glucose_feature("low_battery_detection", "time_fault")),
                    Characteristic(RACP, ["write", "indicate"], on_write=self._racp_write),
                ],
            )
        ]

    def on_connect(self, link: Link) -> None:
        super().on_connect(link)
        self._sent_this_session = 0

    def add_record(self, record: GlucoseRecord) -> None:
        self.records.append(record)
        self.records.sort(key=lambda r: r.sequence)

    def _delete(self, selected: list[GlucoseRecord]) -> None:
        doomed = {r.sequence for r in selected}
        self.records = [r for r in self.records if r.sequence not in doomed]

    async def _report(self, link: Link, op: int, selected: list[GlucoseRecord]) -> None:
        for record in selected:
            faults = self.faults
            if (faults.drop_after_records is not None and faults.drop_times > 0
                    and self._sent_this_session == faults.drop_after_records):
                faults.drop_times -= 1
                link.drop()
                return
            frame = record.encode()
            if faults.garbage_at_record is not None and faults.garbage_at_record == len(self.sent_sequences):
                frame = faults.garbage_frame
            self.sent_sequences.append(record.sequence)
            self._sent_this_session += 1
            await link.send(GLUCOSE_MEASUREMENT, frame)
            context = record.encode_context()
            if context is not None:
                await link.send(GLUCOSE_CONTEXT, context)
        await link.send(RACP, enc.encode_racp_response(op, enc.RESPONSE_SUCCESS))

    def _select(self, operator: int, operand: bytes) -> tuple[list[GlucoseRecord], int | None]:
        records = self.records
        if operator == enc.OPERATOR_ALL:
            return list(records), None
        if operator == enc.OPERATOR_FIRST:
            return records[:1], None
        if operator == enc.OPERATOR_LAST:
            return records[-1:], None
        if operator in (enc.OPERATOR_LESS_OR_EQUAL, enc.OPERATOR_GREATER_OR_EQUAL, enc.OPERATOR_WITHIN_RANGE):
            if not operand:
                return [], enc.RESPONSE_INVALID_OPERAND
            if operand[0] != enc.FILTER_SEQUENCE_NUMBER:
                return [], enc.RESPONSE_OPERAND_NOT_SUPPORTED
            needed = 5 if operator == enc.OPERATOR_WITHIN_RANGE else 3
            if len(operand) != needed:
                return [], enc.RESPONSE_INVALID_OPERAND
            if operator == enc.OPERATOR_WITHIN_RANGE:
                low, high = struct.unpack_from("<HH", operand, 1)
                return [r for r in records if low <= r.sequence <= high], None
            (value,) = struct.unpack_from("<H", operand, 1)
            if operator == enc.OPERATOR_LESS_OR_EQUAL:
                return [r for r in records if r.sequence <= value], None
            return [r for r in records if r.sequence >= value], None
        if operator == enc.OPERATOR_NULL:
            return [], enc.RESPONSE_INVALID_OPERATOR
        return [], enc.RESPONSE_OPERATOR_NOT_SUPPORTED


class HeartRateStrap(Peripheral):
    """Heart Rate Service: notifies live measurements at ``hz`` while subscribed.

    ``rates`` are cycled; each frame carries the RR interval of its rate and, every tenth frame,
    the energy expended so far. ``frames`` limits how many are sent before the strap ends the link
    (taken off); None sends until the central disconnects.
    """

    profile = "ble.heart_rate"
    primary_service = HEART_RATE_SERVICE

    def __init__(self, address: str, rates: list[int] | None = None, *, hz: float = 4.0, frames: int | None = None,
                 contact: bool | None = True, **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-HRM")
        kwargs.setdefault("has_current_time", False)
        super().__init__(address, **kwargs)
        self.rates = list(rates or [72])
        self.hz = hz
        self.frames = frames
        self.contact = contact
        self.sent_frames: list[bytes] = []
        self.energy = 0

    def profile_services(self) -> list[Service]:
        return [
            Service(
                HEART_RATE_SERVICE,
                [
                    Characteristic(HEART_RATE_MEASUREMENT, ["notify"]),
                    Characteristic(BODY_SENSOR_LOCATION, ["read"], bytes([1])),  # chest
                ],
            )
        ]

    def on_subscribe(self, link: Link, uuid: str) -> None:
        if uuid == HEART_RATE_MEASUREMENT and not self.faults.silent_after_connect:
            self.spawn(self._notify(link))

    async def _notify(self, link: Link) -> None:
        counter = range(self.frames) if self.frames is not None else itertools.count()
        rates = itertools.cycle(self.rates)
        for index in counter:
            bpm = next(rates)
            self.energy += 1
            frame = enc.encode_heart_rate(
                bpm, uint16=bpm > 255, contact=self.contact,
                energy=self.energy if index % 10 == 0 else None,
                rr=[enc.rr_units(60 / bpm)] if bpm else [],
            )
            if self.faults.garbage_at_record == index:
                frame = self.faults.garbage_frame
            self.sent_frames.append(frame)
            await link.send(HEART_RATE_MEASUREMENT, frame)
            await asyncio.sleep(1 / self.hz)
        link.drop()


def record_to_json(record: BpRecord | WeightRecord | GlucoseRecord) -> dict[str, Any]:
    data = asdict(record)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    return data

