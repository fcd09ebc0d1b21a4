"""A simulated thermometer: Health Thermometer Service (HTS 1.0, 0x1809), byte-exact from the spec.

Encoders (HTS 1.0 sections 3.1-3.3, summarised in ``specs/ble-gatt.md``): Temperature Measurement
(0x2A1C) and Intermediate Temperature (0x2A1E) share one layout (flags; FLOAT temperature in Celsius
or Fahrenheit; time stamp; temperature type), Temperature Type (0x2A1D) is one uint8. Numbers and
times come from ``firmware_sims.ble.encoders``; nothing here imports the gateway.

Behaviour (HTS 1.0 section 4): once the central enables indications on Temperature Measurement the
thermometer indicates its stored readings, then, if it is measuring, notifies intermediate values on
0x2A1E and indicates the final one, and ends the link.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.gatt import Characteristic, Link, Peripheral, Service, uuid16

HEALTH_THERMOMETER_SERVICE = uuid16(0x1809)
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
TEMPERATURE_TYPE = uuid16(0x2A1D)
INTERMEDIATE_TEMPERATURE = uuid16(0x2A1E)
MEASUREMENT_INTERVAL = uuid16(0x2A21)

# Temperature Type codes (GATT Specification Supplement 0x2A1D).
SITES = {"armpit": 1, "body": 2, "ear": 3, "finger": 4, "gastro_intestinal_tract": 5, "mouth": 6, "rectum": 7,
         "toe": 8, "tympanum": 9}


def encode_temperature(
    value: enc.Number, *, fahrenheit: bool = False, timestamp: datetime | None = None, site: int | None = None
) -> bytes:
    """Temperature Measurement / Intermediate Temperature: flags (bit 0 Fahrenheit, bit 1 time stamp,
    bit 2 temperature type), FLOAT temperature, time stamp, temperature type."""
    flags = (0x01 if fahrenheit else 0) | (0x02 if timestamp is not None else 0) | (0x04 if site is not None else 0)
    out = bytes([flags]) + enc.encode_float(value)
    if timestamp is not None:
        out += enc.encode_date_time(timestamp)
    if site is not None:
        if not 0 <= site <= 0xFF:
            raise enc.EncodeError(f"temperature type {site} is not a uint8")
        out += bytes([site])
    return out


def encode_temperature_type(site: int) -> bytes:
    return bytes([site & 0xFF])


@dataclass
class TemperatureRecord:
    value: enc.Number
    timestamp: datetime | None = None
    site: int | None = None
    """Temperature type in the frame (None: the device's fixed type, if any, is in 0x2A1D instead)."""
    raw: str | None = None
    """Hex sent instead of the encoded record: a record the device's own memory holds broken."""

    def encode(self, fahrenheit: bool) -> bytes:
        if self.raw is not None:
            return bytes.fromhex(self.raw)
        return encode_temperature(self.value, fahrenheit=fahrenheit, timestamp=self.timestamp, site=self.site)


class Thermometer(Peripheral):
    """HTS 1.0: stored readings indicated on connect, intermediate values while ``measuring``.

    ``fahrenheit`` sends every value in °F (values are given in the unit sent); ``fixed_site`` puts a
    Temperature Type characteristic in the table; ``measuring`` is a list of intermediate values
    notified before the last of them is indicated as the final reading.
    """

    profile = "ble.thermometer"
    primary_service = HEALTH_THERMOMETER_SERVICE

    def __init__(self, address: str, records: list[TemperatureRecord] | None = None, *, fahrenheit: bool = False,
                 fixed_site: int | None = None, measuring: list[float] | None = None,
                 measuring_interval_s: float = 0.02, **kwargs: Any) -> None:
        kwargs.setdefault("model", "SIM-THERMO")
        super().__init__(address, **kwargs)
        self.records = list(records or [])
        self.fahrenheit = fahrenheit
        self.fixed_site = fixed_site
        self.measuring = list(measuring or [])
        self.measuring_interval_s = measuring_interval_s
        self.sent_frames: list[bytes] = []
        self.sent_intermediate: list[bytes] = []

    def profile_services(self) -> list[Service]:
        characteristics = [
            Characteristic(TEMPERATURE_MEASUREMENT, ["indicate"]),
            Characteristic(INTERMEDIATE_TEMPERATURE, ["notify"]),
            Characteristic(MEASUREMENT_INTERVAL, ["read"], (0).to_bytes(2, "little")),
        ]
        if self.fixed_site is not None:
            characteristics.append(Characteristic(TEMPERATURE_TYPE, ["read"], encode_temperature_type(self.fixed_site)))
        return [Service(HEALTH_THERMOMETER_SERVICE, characteristics)]

    def on_subscribe(self, link: Link, uuid: str) -> None:
        if uuid == TEMPERATURE_MEASUREMENT and not self.faults.silent_after_connect:
            self.spawn(self._send(link))

    async def _send(self, link: Link) -> None:
        faults = self.faults
        for index, record in enumerate(self.records):
            if faults.drop_after_records is not None and faults.drop_times > 0 and index == faults.drop_after_records:
                faults.drop_times -= 1
                link.drop()
                return
            frame = faults.garbage_frame if faults.garbage_at_record == index else record.encode(self.fahrenheit)
            self.sent_frames.append(frame)
            await link.send(TEMPERATURE_MEASUREMENT, frame)
        if self.measuring:
            for value in self.measuring:
                frame = encode_temperature(value, fahrenheit=self.fahrenheit)
                self.sent_intermediate.append(frame)
                await link.send(INTERMEDIATE_TEMPERATURE, frame)
                await asyncio.sleep(self.measuring_interval_s)
            final = TemperatureRecord(self.measuring[-1], datetime.now().replace(microsecond=0))
            self.records.append(final)
            frame = final.encode(self.fahrenheit)
            self.sent_frames.append(frame)
            await link.send(TEMPERATURE_MEASUREMENT, frame)
            self.measuring = []
        await asyncio.sleep(0.01)
        link.drop()
