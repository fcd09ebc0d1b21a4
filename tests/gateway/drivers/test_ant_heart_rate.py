"""The ANT+ heart-rate driver against a simulated ANT stick and strap on a real pty."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from firmware_sims.serial.ant_stick import AntFaults, HeartRateStrap, PtyAntStick
from gateway.codecs.common import Measurement
from gateway.drivers.ant_heart_rate import STATE_KEY, AntConfigError, AntHeartRateDriver
from gateway.drivers.base import (
    ClockCheck,
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceRecord,
    DeviceTimeoutError,
    UnreadableRecord,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

# A made-up key for the simulated network: the real ANT+ key comes from the config, never the code.
KEY_HEX = "0123456789abcdef"
KEY = bytes.fromhex(KEY_HEX)
STICK = DeviceInfo(uid="usb:0fcf:1008:stick1", transport="usb", profile="serial.ant_hrm")


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[DeviceInfo, Measurement, ClockCheck | None]] = []
        self.unreadable: list[UnreadableRecord] = []

    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        if isinstance(measurement, UnreadableRecord):
            self.unreadable.append(measurement)  # what the gateway's sink quarantines
            return
        self.items.append((device, measurement, clock))


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.db")
    yield store
    store.close()


def run(sim: PtyAntStick, sink: Sink, state: DeviceStateStore, wait_s: float = 10, **options) -> object:
    options = {"network_key": KEY_HEX, "cadence_s": 0.2, **options}
    driver = AntHeartRateDriver(sim.path, STICK, sink, state, options=options)
    return asyncio.run(asyncio.wait_for(driver.run(), wait_s))


def test_setup_sequence_learns_the_strap_and_batches_heart_rate(state) -> None:
    sink = Sink()
    strap = HeartRateStrap(device_number=4321, network_key=KEY, heart_rate=lambda t: 60.0)
    with PtyAntStick(strap) as sim:
        result = run(sim, sink, state, max_readings=3)
        commands = [message_id for message_id, _ in sim.received]
        setup = dict(sim.received)
    assert commands[:7] == [0x4A, 0x46, 0x42, 0x51, 0x43, 0x45, 0x4B]
    assert setup[0x46] == b"\x00" + KEY
    assert setup[0x51] == bytes([0, 0, 0, 120, 0])  # first session: any strap
    assert setup[0x43] == (8070).to_bytes(2, "little").rjust(3, b"\x00")
    assert setup[0x45] == bytes([0, 57])
    assert 0x4D in commands  # asked for the strap's channel id
    assert result.measurements == len(sink.items) >= 3
    device, first, _ = sink.items[0]
    assert device.uid == "ant:4321:1" and device.transport == "usb"
    assert first.values["heart_rate"].value == 60.0
    assert first.details["samples"] >= 1 and "window_start" in first.details
    rr = first.values["rr_intervals"]
    assert rr.unit == "s/1024" and set(rr.value) == {1024.0}  # one RR per beat, not per message
    beats = sum(len(m.values["rr_intervals"].value) for _, m, _ in sink.items if "rr_intervals" in m.values)
    samples = sum(m.details["samples"] for _, m, _ in sink.items)
    assert beats < samples / 3  # 4 messages a second, 1 beat a second
    assert state.get(STICK.uid, STATE_KEY) == [4321, 120, 1]
    reading = to_reading(device, first, None, datetime.now(UTC), discriminator=first.details["window_start"])
    assert reading.values["rr_intervals"].value[0] == 1.0


def test_a_learnt_strap_is_asked_for_by_number_next_session(state) -> None:
    state.set(STICK.uid, STATE_KEY, [4321, 120, 1])
    sink = Sink()
    with PtyAntStick(HeartRateStrap(device_number=4321, network_key=KEY)) as sim:
        run(sim, sink, state, max_readings=1)
        setup = dict(sim.received)
    assert setup[0x51] == bytes([0]) + (4321).to_bytes(2, "little") + bytes([120, 1])
    assert sink.items[0][0].uid == "ant:4321:1"


def test_bad_checksums_and_garbage_are_skipped(state) -> None:
    sink = Sink()
    faults = AntFaults(bad_checksum_every=3, garbage_every=5)
    with PtyAntStick(HeartRateStrap(network_key=KEY, heart_rate=lambda t: 75.0), faults) as sim:
        run(sim, sink, state, max_readings=2)
    assert len(sink.items) >= 2
    assert {m.values["heart_rate"].value for _, m, _ in sink.items} == {75.0}


def test_wrong_network_key_finds_no_strap_and_keeps_searching(state) -> None:
    sink = Sink()
    with PtyAntStick(HeartRateStrap(network_key=bytes(8)), search_timeout=0.1) as sim:
        with pytest.raises(TimeoutError):
            run(sim, sink, state, wait_s=1.0)
        reopened = sum(1 for message_id, _ in sim.received if message_id == 0x4B)
    assert sink.items == [] and reopened >= 2


def test_missing_network_key_is_a_config_error(state) -> None:
    with PtyAntStick(HeartRateStrap(network_key=KEY)) as sim:
        driver = AntHeartRateDriver(sim.path, STICK, Sink(), state, options={})
        with pytest.raises(AntConfigError, match="ant_network_key"):
            asyncio.run(driver.run())


def test_wrong_baud_rate_is_a_timeout_naming_the_step(state) -> None:
    with PtyAntStick(HeartRateStrap(network_key=KEY)) as sim:
        driver = AntHeartRateDriver(sim.path, STICK, Sink(), state, baudrate=57600,
                                    options={"network_key": KEY_HEX, "reply_timeout_s": 0.3})
        with pytest.raises(DeviceTimeoutError, match="set network key"):
            asyncio.run(asyncio.wait_for(driver.run(), 5))


def clear_of_a_window_boundary(cadence_s: float, margin_s: float = 5.0) -> None:
    """Windows align to the cadence on the wall clock: start where a run of a few seconds cannot cross a
    boundary (which would close one window on the way and make two)."""
    to_boundary = cadence_s - time.time() % cadence_s
    if to_boundary < margin_s:
        time.sleep(to_boundary + 0.05)


def test_pulled_stick_keeps_the_open_window(state) -> None:
    sink = Sink()
    clear_of_a_window_boundary(60.0)
    with PtyAntStick(HeartRateStrap(network_key=KEY), AntFaults(pull_after_broadcasts=10)) as sim:
        with pytest.raises(DeviceDisconnectedError):
            run(sim, sink, state, cadence_s=60.0)
    assert len(sink.items) == 1 and sink.items[0][1].details["samples"] >= 5


def test_strap_leaving_range_closes_its_window(state) -> None:
    sink = Sink()
    faults = AntFaults(strap_leaves_after=15)
    clear_of_a_window_boundary(60.0)
    with PtyAntStick(HeartRateStrap(network_key=KEY), faults, search_timeout=0.1) as sim:
        run(sim, sink, state, cadence_s=60.0, max_readings=1)
    assert len(sink.items) == 1 and sink.items[0][1].details["samples"] >= 10
