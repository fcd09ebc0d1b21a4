"""The TaiDoc driver against the pty simulator: full and incremental downloads, a pulled cable, a
cleared memory, a wrapped memory, a wrong clock, bad frames, the 2-in-1 meter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sims.serial.taidoc import (
    TWO_IN_ONE,
    BpRecord,
    Faults,
    GlucoseRecord,
    PtyTaidoc,
    TaidocMeter,
)
from gateway.codecs.common import Measurement
from gateway.drivers.base import (
    ClockCheck,
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceRecord,
    DeviceTimeoutError,
    SessionResult,
    UnreadableRecord,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.serial_port import ProtocolError
from gateway.drivers.taidoc import TaidocDriver, UnsupportedModelError
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

SERIAL = "3128A0B1C2D3E4F5"
UID = f"usb:10c4:ea80:{SERIAL}"


class CollectingSink:
    """Stands in for the outbox: keeps (device, measurement, clock) and the reading id it would store."""

    def __init__(self) -> None:
        self.items: list[tuple[DeviceInfo, Measurement, ClockCheck | None]] = []
        self.unreadable: list[UnreadableRecord] = []

    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        if isinstance(measurement, UnreadableRecord):
            self.unreadable.append(measurement)  # what the gateway's sink quarantines
            return
        self.items.append((device, measurement, clock))

    def reading_ids(self) -> list[str]:
        return [to_reading(d, m, c, datetime.now(UTC)).id for d, m, c in self.items]

    def systolics(self) -> list[float]:
        return [m.values["systolic"].value for _, m, _ in self.items]


def bp(minutes_ago: int, systolic: int, **kw) -> BpRecord:
    when = (datetime.now() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    return BpRecord(when=when, systolic=systolic, diastolic=kw.pop("diastolic", 80), pulse=kw.pop("pulse", 70), **kw)


def meter_with(records: list[BpRecord], **kw) -> TaidocMeter:
    meter = TaidocMeter(serial=SERIAL, **kw)
    for record in records:  # oldest first, as they were measured
        meter.store(record)
    return meter


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.sqlite")
    yield store
    store.close()


def run_session(meter: TaidocMeter, state: DeviceStateStore, sink: CollectingSink, faults: Faults | None = None,
                **options) -> SessionResult:
    with PtyTaidoc(meter, faults) as sim:
        device = DeviceInfo(uid="usb:10c4:ea80:pending", transport="usb", profile="serial.taidoc")
        options.setdefault("reply_timeout_s", 0.5)
        driver = TaidocDriver(sim.path, device, sink, state, options=options)
        return asyncio.run(asyncio.wait_for(driver.run(), 20))


def test_full_download_reads_every_record_oldest_first_and_identifies_the_device(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132, arrhythmia=True, ihb=3), bp(30, 143, averaged=True)])
    sink = CollectingSink()
    result = run_session(meter, state, sink)

    assert result.measurements == 3
    assert sink.systolics() == [121, 132, 143]
    device, first, clock = sink.items[0]
    assert device.uid == UID and device.serial == SERIAL and device.model == "TD-3128"
    assert first.kind == "blood_pressure" and first.device_time == meter.records[2].when
    assert first.values["mean_arterial"].value == meter.records[2].map_value()
    assert "irregular_pulse" in sink.items[1][1].flags and sink.items[1][1].details["ihb"] == "atrial_fibrillation"
    assert "averaged" in sink.items[2][1].flags
    assert clock is not None and clock.device_now is not None and not clock.unset
    assert meter.powered_off.is_set(), "a BP monitor is switched off at the end"


def test_second_download_adds_nothing_and_a_new_measurement_is_the_only_one_read_next(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132)])
    sink = CollectingSink()
    run_session(meter, state, sink)
    assert run_session(meter, state, sink).measurements == 0
    assert len(sink.items) == 2

    meter.store(bp(5, 150))
    meter.requests.clear()
    assert run_session(meter, state, sink).measurements == 1
    assert sink.systolics() == [121, 132, 150]
    # Found the anchor where expected: the new record and two anchor checks, not a scan of all.
    assert meter.requests.count(0x26) == 3


def test_cable_pulled_mid_download_resumes_cleanly_on_replug(state) -> None:
    meter = meter_with([bp(60 - i, 110 + i) for i in range(10)])
    sink = CollectingSink()
    # wake, model, 2 serial halves, clock, count = 6 replies; then 2 per record: pull after 4 records.
    with pytest.raises(DeviceDisconnectedError):
        run_session(meter, state, sink, Faults(unplug_after_replies=6 + 2 * 4 + 1))
    assert sink.systolics() == [110, 111, 112, 113]

    result = run_session(meter, state, sink)
    assert result.measurements == 6
    assert sink.systolics() == list(range(110, 120))
    assert len(set(sink.reading_ids())) == 10


def test_cleared_memory_starts_over_without_losing_or_doubling(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132), bp(30, 143)])
    sink = CollectingSink()
    run_session(meter, state, sink)

    meter.clear()
    result = run_session(meter, state, sink)
    assert result.measurements == 0 and any("cleared" in n for n in result.notes)

    meter.store(bp(10, 155))
    meter.store(bp(5, 166))
    assert run_session(meter, state, sink).measurements == 2
    assert sink.systolics() == [121, 132, 143, 155, 166]


def test_cleared_and_refilled_between_sessions_reads_every_new_record(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132)])
    sink = CollectingSink()
    run_session(meter, state, sink)
    meter.clear()
    for i in range(4):
        meter.store(bp(20 - i, 140 + i))
    result = run_session(meter, state, sink)
    assert result.measurements == 4 and any("cleared" in n for n in result.notes)
    assert sink.systolics() == [121, 132, 140, 141, 142, 143]


def test_full_memory_that_wrapped_finds_the_last_record_read_by_scanning(state) -> None:
    meter = meter_with([bp(100 - i, 100 + i) for i in range(5)], capacity=5)
    sink = CollectingSink()
    run_session(meter, state, sink)
    meter.store(bp(3, 200))
    meter.store(bp(2, 201))  # the two oldest fell off; the count stays 5
    result = run_session(meter, state, sink)
    assert result.measurements == 2 and any("wrapped" in n for n in result.notes)
    assert sink.systolics()[-2:] == [200, 201] and len(set(sink.reading_ids())) == 7


def test_wrong_device_clock_is_measured_and_corrected_after_the_download(state) -> None:
    meter = meter_with([bp(30, 130)], clock_offset=timedelta(hours=-3))
    sink = CollectingSink()
    result = run_session(meter, state, sink)
    _, _, clock = sink.items[0]
    assert clock is not None and not clock.was_set
    assert clock.offset is not None and abs(clock.offset + timedelta(hours=3)) < timedelta(minutes=2)
    assert result.clock is not None and result.clock.was_set
    assert abs(meter.clock_offset) < timedelta(minutes=2), "the device clock now shows the gateway's time"
    assert meter.requests.index(0x33) > max(i for i, c in enumerate(meter.requests) if c == 0x26)


def test_bad_checksum_and_garbage_are_retried_without_losing_a_record(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132)])
    sink = CollectingSink()
    faults = Faults(bad_checksum_on_reply={7}, garbage_before_reply={3: b"\x00\xff\x13garbage", 9: b"\x51\x51"})
    result = run_session(meter, state, sink, faults)
    assert sink.systolics() == [121, 132]
    assert any("bad or stray" in n for n in result.notes)


def test_a_device_that_keeps_sending_bad_frames_fails_the_session_and_keeps_state(state) -> None:
    meter = meter_with([bp(50, 121)])
    sink = CollectingSink()
    with pytest.raises(ProtocolError):
        run_session(meter, state, sink, Faults(bad_checksum_on_reply={7, 8, 9}), retries=2)
    assert sink.items == []
    assert run_session(meter, state, sink).measurements == 1


def test_a_silent_device_is_a_timeout(state) -> None:
    meter = meter_with([bp(50, 121)])
    with pytest.raises(DeviceTimeoutError):
        run_session(meter, state, CollectingSink(), Faults(silent_on_reply={1, 2, 3}), reply_timeout_s=0.2)


def test_two_in_one_meter_gives_glucose_and_blood_pressure_records(state) -> None:
    meter = TaidocMeter(model=TWO_IN_ONE, serial="3261000011112222")
    when = datetime.now().replace(second=0, microsecond=0)
    meter.store(GlucoseRecord(when - timedelta(minutes=30), 104, glucose_type=1, code=0x106))
    meter.store(BpRecord(when - timedelta(minutes=20), systolic=262, diastolic=95, pulse=88))
    meter.store(GlucoseRecord(when - timedelta(minutes=10), 98, glucose_type=3))
    sink = CollectingSink()
    assert run_session(meter, state, sink).measurements == 3
    kinds = [m.kind for _, m, _ in sink.items]
    assert kinds == ["glucose", "blood_pressure", "glucose"]
    glucose, pressure, control = (m for _, m, _ in sink.items)
    assert glucose.values["glucose"].value == 104 and glucose.details["meal"] == "before_meal"
    assert glucose.details["strip_code"] == 0x106
    assert pressure.values["systolic"].value == 262 and "mean_arterial" not in pressure.values
    assert "control_solution" in control.flags
    assert sink.items[0][0].model == "TD-3261"


def test_unknown_model_is_refused_before_anything_is_read(state) -> None:
    meter = TaidocMeter(model=0x9999, serial=SERIAL)
    meter.store(bp(5, 120))
    with pytest.raises(UnsupportedModelError):
        run_session(meter, state, CollectingSink())
    assert 0x26 not in meter.requests


def test_an_error_record_goes_to_the_sink_as_unreadable_and_the_download_moves_on(state) -> None:
    meter = meter_with([bp(50, 121), BpRecord(bp(40, 0).when, systolic=0, diastolic=0, pulse=0), bp(30, 143)])
    sink = CollectingSink()
    result = run_session(meter, state, sink)
    assert sink.systolics() == [121, 143]
    assert any("record 1 quarantined" in n for n in result.notes)
    (unreadable,) = sink.unreadable
    assert unreadable.position == 1 and len(unreadable.raw) == 16 and "systolic" in unreadable.reason
    assert run_session(meter, state, sink).measurements == 0
    assert len(sink.unreadable) == 1  # the anchor moved past it: not read again


def test_unset_clock_is_reported_and_set_after_the_download(state) -> None:
    reset_to = datetime(2000, 1, 1, 0, 5)
    meter = TaidocMeter(serial=SERIAL, clock_offset=reset_to - datetime.now())
    meter.store(BpRecord(datetime(2000, 1, 1, 0, 2), systolic=135, diastolic=85, pulse=66))
    sink = CollectingSink()
    result = run_session(meter, state, sink)
    device, measurement, clock = sink.items[0]
    assert clock is not None and clock.unset
    reading = to_reading(device, measurement, clock, datetime.now(UTC))
    assert "clock_unset" in reading.flags and reading.clock.judgement == "gateway"
    assert reading.device_time == datetime(2000, 1, 1, 0, 2), "the device's own time is kept for the record id"
    assert result.clock is not None and result.clock.was_set and abs(meter.clock_offset) < timedelta(minutes=2)


def test_wrong_baud_rate_reads_nothing_and_fails_with_a_timeout(state) -> None:
    meter = meter_with([bp(50, 121)])
    sink = CollectingSink()
    with PtyTaidoc(meter) as sim:
        device = DeviceInfo(uid="usb:10c4:ea80:pending", transport="usb", profile="serial.taidoc")
        driver = TaidocDriver(sim.path, device, sink, state, baudrate=9600, options={"reply_timeout_s": 0.2})
        with pytest.raises(DeviceTimeoutError):
            asyncio.run(asyncio.wait_for(driver.run(), 20))
    assert sink.items == [] and state.get(UID, "taidoc.anchor") is None


def test_demo_meters_download_completely(state) -> None:
    from firmware_sims.serial.taidoc import demo_meter

    for two_in_one in (False, True):
        sink = CollectingSink()
        assert run_session(demo_meter(two_in_one=two_in_one, records=4), state, sink).measurements == 4
        assert {m.kind for _, m, _ in sink.items} == ({"blood_pressure", "glucose"} if two_in_one else
                                                      {"blood_pressure"})


def test_a_record_the_outbox_refused_is_read_again_next_session(state) -> None:
    meter = meter_with([bp(50, 121), bp(40, 132), bp(30, 143)])

    class FailingOnce(CollectingSink):
        async def __call__(self, device, measurement, clock) -> None:  # type: ignore[no-untyped-def]
            if measurement.values["systolic"].value == 132 and not getattr(self, "failed", False):
                self.failed = True
                raise OSError("disk full")
            await super().__call__(device, measurement, clock)

    sink = FailingOnce()
    with pytest.raises(OSError):
        run_session(meter, state, sink)
    assert sink.systolics() == [121]
    assert run_session(meter, state, sink).measurements == 2
    assert sink.systolics() == [121, 132, 143]


def test_the_usb_table_sends_a_cp2110_bridge_to_this_driver_at_19200_8n1() -> None:
    from gateway.discovery.usb_devices import SUPPORTED_DEVICES, PortFacts, match_port

    entry = match_port(PortFacts("/dev/ttyUSB3", vid=0x10C4, pid=0xEA80), SUPPORTED_DEVICES)
    assert entry is not None and entry.profile == "serial.taidoc"
    assert (entry.baudrate, entry.bytesize, entry.parity, entry.stopbits) == (19200, 8, "N", 1)
    assert entry.driver.driver_class is TaidocDriver
