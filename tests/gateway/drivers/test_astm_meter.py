"""The ASTM meter driver against a simulated meter on a real pty (firmware_sims.serial.astm_meter)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sims.serial.astm_meter import AstmFaults, GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.codecs.common import Measurement
from gateway.drivers.astm_meter import AstmMeterDriver
from gateway.drivers.base import ClockCheck, DeviceDisconnectedError, DeviceInfo, DeviceRecord, UnreadableRecord
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.serial_port import ProtocolError, usb_uid
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[DeviceInfo, Measurement, ClockCheck | None]] = []
        self.unreadable: list[UnreadableRecord] = []

    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        if isinstance(measurement, UnreadableRecord):
            self.unreadable.append(measurement)  # what the gateway's sink quarantines
            return
        self.items.append((device, measurement, clock))

    def reading_ids(self) -> set[str]:
        now = datetime.now(UTC)
        return {to_reading(d, m, c, now).id for d, m, c in self.items}


def memory(n: int = 5) -> list[GlucoseResult]:
    base = datetime(2026, 11, 20, 7, 30)
    return [GlucoseResult(base + timedelta(hours=6 * i), 90 + 7 * i, flags=("B",) if i % 2 else ()) for i in range(n)]


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.db")
    yield store
    store.close()


def run_driver(path: str, sink: Sink, state: DeviceStateStore, **options) -> object:
    device = DeviceInfo(uid=usb_uid(None, None, path), transport="usb", profile="serial.astm")
    options.setdefault("establish_timeout_s", 5)
    options.setdefault("frame_timeout_s", 5)
    driver = AstmMeterDriver(path, device, sink, state, options=options)

    async def go():
        return await asyncio.wait_for(driver.run(), 20)

    return asyncio.run(go())


def test_full_memory_download_with_the_meter_clock(state) -> None:
    meter = GlucoseMeter(results=memory(5), clock_offset=timedelta(minutes=-47))
    sink = Sink()
    with PtyAstmMeter(meter) as sim:
        result = run_driver(sim.path, sink, state)
        assert sim.finished
    assert result.measurements == 5
    values = [m.values["glucose"].value for _, m, _ in sink.items]
    assert values == [90, 97, 104, 111, 118]
    device, first, clock = sink.items[0]
    assert device.uid == "usb:0000:0000:7390-1163170" and device.serial == "7390-1163170"
    assert first.device_time == datetime(2026, 11, 20, 7, 30)
    assert abs(clock.offset + timedelta(minutes=47)) < timedelta(minutes=1)
    reading = to_reading(device, first, clock, datetime.now(UTC))
    assert reading.clock.judgement.value == "corrected"


def test_second_download_after_replug_adds_no_reading(state) -> None:
    meter = GlucoseMeter(results=memory(4))
    sink = Sink()
    with PtyAstmMeter(meter) as sim:
        run_driver(sim.path, sink, state)
    first_ids = sink.reading_ids()
    meter.results.append(GlucoseResult(datetime(2026, 11, 22, 8, 0), 131))
    with PtyAstmMeter(meter) as sim:
        run_driver(sim.path, sink, state)
    assert len(sink.items) == 9
    assert len(sink.reading_ids()) == 5 and first_ids < sink.reading_ids()


def test_bad_checksum_is_naked_and_retransmitted(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(3)), AstmFaults(corrupt_frames={1: 1, 4: 2})) as sim:
        result = run_driver(sim.path, sink, state)
        assert sim.naks == 3
    assert result.measurements == 3


def test_a_frame_bad_seven_times_fails_keeping_what_came_before(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(3)), AstmFaults(corrupt_frames={4: 7})) as sim:
        with pytest.raises(ProtocolError):
            run_driver(sim.path, sink, state)
    assert [m.values["glucose"].value for _, m, _ in sink.items] == [90]


def test_cable_pulled_after_frames_keeps_acknowledged_results(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(5)), AstmFaults(pull_after_frames=4)) as sim:
        with pytest.raises(DeviceDisconnectedError):
            run_driver(sim.path, sink, state)
    assert len(sink.items) == 2  # frames: H, P, R1, R2, then the cable went


def test_cable_pulled_mid_frame_sends_nothing_half_parsed(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(5)), AstmFaults(pull_mid_frame=5)) as sim:
        with pytest.raises(DeviceDisconnectedError):
            run_driver(sim.path, sink, state)
    assert [m.values["glucose"].value for _, m, _ in sink.items] == [90, 97]


def test_noise_before_enq_is_skipped(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(2)), AstmFaults(noise_before=b"\x00\xff garbage \x13")) as sim:
        result = run_driver(sim.path, sink, state)
    assert result.measurements == 2
    assert any("noise" in note for note in result.notes)


def test_wrong_baud_rate_is_a_clear_error(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(2))) as sim:
        device = DeviceInfo(uid="usb:0000:0000:x", transport="usb", profile="serial.astm")
        driver = AstmMeterDriver(sim.path, device, sink, state, baudrate=4800,
                                 options={"establish_timeout_s": 1.0})
        with pytest.raises(ProtocolError, match="wrong baud rate 4800"):
            asyncio.run(asyncio.wait_for(driver.run(), 10))
    assert sink.items == []


def test_unset_meter_clock_flags_every_reading(state) -> None:
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=memory(2), clock_unset=True)) as sim:
        run_driver(sim.path, sink, state)
    device, measurement, clock = sink.items[0]
    assert clock.unset and clock.device_now is None
    assert "clock_unset" in to_reading(device, measurement, clock, datetime.now(UTC)).flags


def test_e1394_layout_with_a_header_split_over_etb_frames(state) -> None:
    meter = GlucoseMeter(results=memory(9), layout="e1394", model="LabMeter" + "X" * 250)
    meter.results[0] = GlucoseResult(datetime(2026, 11, 20, 7, 30), 620, flags=(">",))
    sink = Sink()
    with PtyAstmMeter(meter) as sim:
        result = run_driver(sim.path, sink, state)
    # 9 results + H (2 frames) + P + L = 13 frames: frame numbers wrapped past 7 to 0.
    assert result.measurements == 9
    assert sink.items[0][1].flags == ("result_above_range",)


def test_control_solution_results_are_not_patient_readings(state) -> None:
    results = [*memory(2), GlucoseResult(datetime(2026, 11, 21, 9, 0), 120, flags=("C",))]
    sink = Sink()
    with PtyAstmMeter(GlucoseMeter(results=results)) as sim:
        result = run_driver(sim.path, sink, state)
    assert result.measurements == 2
