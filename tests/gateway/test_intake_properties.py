"""For every frame a codec decodes, the sink (normalise + contract + outbox) commits it: a reading in
the outbox or the record in the device quarantine, never an exception that would end the session.

Frames are built around each profile's layout (flags over every combination, extreme values, dates
from year 0 to 9999, NaN and infinity in text formats) so most of them decode; they then go through
:class:`gateway.readings.intake.RecordIntake` into a real SQLite outbox, with device clocks and gateway time
zones chosen to make the time arithmetic overflow where it can (a year-1 date east of UTC).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from tempfile import TemporaryDirectory
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sims.serial import astm_meter as astm_sim
from firmware_sims.serial import taidoc as taidoc_sim
from firmware_sims.serial.ad_scale import format_line
from firmware_sims.serial.ant_stick import message as ant_message
from gateway.codecs.common import DecodeError, Measurement
from gateway.drivers.base import ClockCheck, DeviceInfo, UnreadableRecord
from gateway.readings.decode import MODEL_PROFILES, PROFILES, decoder_for
from gateway.readings.intake import RecordIntake, RecordOutcome
from gateway.readings.normalise import to_reading
from gateway.store.outbox import Outbox

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ZONES: list[tzinfo] = [UTC, ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Etc/GMT+12"), ZoneInfo("Europe/London")]

u8 = st.integers(0, 255)
ieee_date = st.builds(
    lambda y, mo, d, h, mi, s: struct.pack("<HBBBBB", y, mo, d, h, mi, s),
    st.one_of(st.sampled_from([0, 1, 2, 1582, 2009, 2026, 9998, 9999]), st.integers(0, 0xFFFF)),
    st.integers(0, 13), st.integers(0, 32), st.integers(0, 24), st.integers(0, 60), st.integers(0, 60),
)
# SFLOATs over the whole range: special values (NaN, NRes, +/-INF), huge exponents, negatives.
sfloat = st.one_of(st.binary(min_size=2, max_size=2),
                   st.sampled_from([b"\xff\x07", b"\x00\x08", b"\xfe\x07", b"\x02\x08", b"\xff\x7f", b"\x01\x80"]))


def _ble(layout: Callable[..., bytes], *parts: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return st.builds(layout, u8, *parts, st.binary(max_size=8))


BLE_FRAMES: dict[str, st.SearchStrategy[bytes]] = {
    # flags, systolic, diastolic, MAP, time stamp, then pulse/user/status as the flags say (and noise)
    "ble.blood_pressure": _ble(lambda f, a, b, c, t, p, rest: bytes([f]) + a + b + c + t + p + rest,
                               sfloat, sfloat, sfloat, ieee_date, sfloat),
    "ble.intermediate_cuff_pressure": _ble(lambda f, a, b, c, t, rest: bytes([f]) + a + b + c + t + rest,
                                           sfloat, sfloat, sfloat, ieee_date),
    # flags, sequence, base time, time offset, concentration, type/location, status
    "ble.glucose": _ble(lambda f, seq, t, off, conc, rest: bytes([f]) + seq + t + off + conc + rest,
                        st.binary(min_size=2, max_size=2), ieee_date, st.binary(min_size=2, max_size=2), sfloat),
    # flags, weight, time stamp, user, BMI, height
    "ble.weight_scale": _ble(lambda f, w, t, rest: bytes([f]) + w + t + rest,
                             st.binary(min_size=2, max_size=2), ieee_date),
    "ble.heart_rate": _ble(lambda f, body, rest: bytes([f]) + body + rest, st.binary(min_size=1, max_size=12)),
    # flags, SpO2, pulse rate, time stamp, measurement status, device and sensor status, PAI (as flagged)
    "ble.plx_spot_check": _ble(lambda f, spo2, pr, t, status, rest: bytes([f]) + spo2 + pr + t + status + rest,
                               sfloat, sfloat, ieee_date, st.binary(min_size=5, max_size=5)),
    # flags, SpO2/PR normal, fast and slow, measurement status, device and sensor status, PAI
    "ble.plx_continuous": _ble(lambda f, a, b, c, d, rest: bytes([f]) + a + b + c + d + rest,
                               sfloat, sfloat, sfloat, sfloat),
    # flags, temperature (FLOAT), time stamp, temperature type
    "ble.thermometer": _ble(lambda f, value, t, rest: bytes([f]) + value + t + rest,
                            st.binary(min_size=4, max_size=4), ieee_date),
    "ble.intermediate_temperature": _ble(lambda f, value, t, rest: bytes([f]) + value + t + rest,
                                         st.binary(min_size=4, max_size=4), ieee_date),
}

astm_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**9).map(str),
    st.text(alphabet="0123456789.-+eEinfa", max_size=8),
)
astm_time = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)).map(
        lambda t: f"{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}"),
    st.text(alphabet="0123456789", min_size=12, max_size=14),
    st.just(""),
)
SERIAL_FRAMES: dict[str, st.SearchStrategy[bytes]] = {
    "serial.astm": st.builds(
        lambda n, value, unit, flags, when: astm_sim.frame(
            1, f"R|{n}|^^^Glucose|{value}|{unit}^P||{flags}||{when}\r", True),
        st.integers(0, 99999), astm_value, st.sampled_from(["mg/dL", "mmol/L", "mg/dl", "g/L", "?"]),
        st.sampled_from(["", ">", "<", "B", "A", "C", "X/Y"]), astm_time,
    ),
    "serial.taidoc": st.builds(
        lambda t, v: taidoc_sim.frame(taidoc_sim.RECORD_TIME, t) + taidoc_sim.frame(taidoc_sim.RECORD_VALUE, v),
        st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
    ),
    "serial.ad_scale": st.builds(
        lambda header, value, unit, style: format_line(header, value, unit, style).encode("latin-1"),
        # Weighted towards lines a scale really sends (stable, a body weight, kg or lb), so enough of
        # the examples decode; the rest try the odd headers, units and values.
        st.sampled_from(["ST", "ST", "ST", "US", "OL", "QT"]),
        st.one_of(st.floats(0, 300), st.none(), st.floats(-1e7, 1e7, allow_nan=False)),
        st.sampled_from(["kg", "lb", "kg", "lb", "g", "oz", ""]),
        st.sampled_from(["balance", "indicator", "csv"]),
    ),
    # Broadcast data on channel 0: an HRM page with any bytes (beat time, count, computed heart rate).
    "serial.ant_hrm": st.builds(lambda page: ant_message(0x4E, b"\x00" + page), st.binary(min_size=8, max_size=8)),
}
FRAMES = {**BLE_FRAMES, **SERIAL_FRAMES}
assert set(FRAMES) == set(PROFILES), "every decodable profile has a frame strategy"

clocks = st.one_of(
    st.none(),
    st.builds(lambda device_now, unset: ClockCheck(gateway_now=NOW, device_now=device_now, unset=unset),
              st.one_of(st.none(), st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))),
              st.booleans()),
)


# A RAM-backed folder where there is one: the outbox is the real SQLite one, minus the fsync wait that
# would make hundreds of examples slow.
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def intake_on_disk(tz: tzinfo) -> Iterator[tuple[RecordIntake, Outbox]]:
    with TemporaryDirectory(dir=_SCRATCH) as folder:
        outbox = Outbox(Path(folder) / "outbox.sqlite")
        try:
            yield RecordIntake(outbox, local_tz=tz, now=lambda: NOW), outbox
        finally:
            outbox.close()


def decode(profile: str, frame: bytes, model: str | None) -> Measurement | None:
    decoder = decoder_for(profile)
    try:
        return decoder(frame, model=model) if profile in MODEL_PROFILES else decoder(frame)
    except DecodeError:
        return None


@pytest.mark.parametrize("profile", sorted(FRAMES))
def test_every_decoded_frame_becomes_a_reading_or_a_quarantined_record(profile: str) -> None:
    transport = "ble" if profile.startswith("ble.") else "usb"
    device = DeviceInfo(uid=f"{transport}:prop:{profile}", transport=transport, profile=profile, model="M\x00X\u202e")
    decoded = 0
    loop = asyncio.new_event_loop()  # one loop (and its thread pool) for every example

    @settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frame=FRAMES[profile], clock=clocks, tz=st.sampled_from(ZONES),
           model=st.sampled_from([None, "TD-3128", "3261", "glucose"]))
    def check(frame: bytes, clock: ClockCheck | None, tz: tzinfo, model: str | None) -> None:
        nonlocal decoded
        measurement = decode(profile, frame, model)
        if measurement is None:
            return
        decoded += 1
        with intake_on_disk(tz) as (intake, outbox):
            outcome = loop.run_until_complete(intake(device, measurement, clock))  # never raises for a bad record
            if outcome.quarantined:
                (record,) = outbox.quarantined_records(device.uid)
                assert record.raw == measurement.raw.hex() and record.reason
                assert outbox.depth() == 0
            else:
                assert outcome is RecordOutcome.STORED
                reading = to_reading(device, measurement, clock, NOW, local_tz=tz)
                assert outbox.ids() == [reading.id] and outbox.quarantined_records() == []
                assert reading.device.model == "MX"  # cleaned on the way, whatever the driver sent
            # The same record again (a device re-sending its memory) changes nothing.
            again = loop.run_until_complete(intake(device, measurement, clock))
            assert again in (RecordOutcome.KNOWN, RecordOutcome.KNOWN_QUARANTINED)
            assert outbox.depth() + len(outbox.quarantined_records()) == 1

    try:
        check()
    finally:
        loop.close()
    assert decoded > 0, f"no {profile} frame decoded: the strategy misses the layout"


@given(raw=st.binary(max_size=64), reason=st.text(max_size=300), position=st.one_of(st.none(), u8, st.text()))
@settings(max_examples=60, deadline=None)
def test_an_undecodable_frame_is_quarantined_once_with_its_bytes(raw: bytes, reason: str, position) -> None:
    device = DeviceInfo(uid="ble:AA:BB", transport="ble", profile="ble.glucose")
    record = UnreadableRecord("ble.glucose", raw, reason, position)
    with intake_on_disk(UTC) as (intake, outbox):
        assert asyncio.run(intake(device, record, None)) is RecordOutcome.QUARANTINED
        assert asyncio.run(intake(device, record, None)) is RecordOutcome.KNOWN_QUARANTINED
        (kept,) = outbox.quarantined_records("ble:AA:BB")
        assert kept.raw == raw.hex() and "\n" not in kept.reason and outbox.depth() == 0


def test_a_device_time_that_overflows_in_utc_is_timed_by_the_gateway_not_raised() -> None:
    """The last minutes of year 9999 west of UTC are in year 10000 in UTC: the time arithmetic would
    overflow, so the clock is judged unset and the gateway's time used; the value is kept."""
    from gateway.codecs.common import Quantity

    measurement = Measurement(profile="ble.glucose", kind="glucose", values={"glucose": Quantity(95.0, "mg/dL")},
                              device_time=datetime(9999, 12, 31, 23, 30), raw=b"\x01\x02")
    device = DeviceInfo(uid="ble:AA:CC", transport="ble", profile="ble.glucose")
    west = ZoneInfo("Etc/GMT+12")
    reading = to_reading(device, measurement, None, NOW, local_tz=west)
    assert reading.measured_at == NOW and "clock_unset" in reading.flags
    assert reading.device_time == datetime(9999, 12, 31, 23, 30)
    with intake_on_disk(west) as (intake, outbox):
        assert asyncio.run(intake(device, measurement, None)) is RecordOutcome.STORED
        assert outbox.ids() == [reading.id] and outbox.quarantined_records() == []
