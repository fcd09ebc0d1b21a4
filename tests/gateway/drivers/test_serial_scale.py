"""The A&D scale driver against a simulated scale on a real pty (firmware_sims.serial.ad_scale)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from firmware_sims.serial.ad_scale import PtyScale, ScaleFaults, Weighing
from gateway.codecs.common import Measurement
from gateway.drivers.base import ClockCheck, DeviceDisconnectedError, DeviceInfo, DeviceRecord, UnreadableRecord
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.serial_port import ProtocolError
from gateway.drivers.serial_scale import SerialScaleDriver
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

DEVICE = DeviceInfo(uid="usb:0403:6001:AD123", transport="usb", profile="serial.ad_scale")


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[DeviceInfo, Measurement, ClockCheck | None]] = []
        self.unreadable: list[UnreadableRecord] = []

    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        if isinstance(measurement, UnreadableRecord):
            self.unreadable.append(measurement)  # what the gateway's sink quarantines
            return
        self.items.append((device, measurement, clock))

    def weights(self) -> list[tuple[float, str]]:
        return [(m.values["body_weight"].value, m.values["body_weight"].unit) for _, m, _ in self.items]


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.db")
    yield store
    store.close()


def run(sim: PtyScale, sink: Sink, state: DeviceStateStore, *, wait_s: float = 10, **kwargs) -> object:
    options = kwargs.pop("options", {})
    driver = SerialScaleDriver(sim.path, DEVICE, sink, state, options=options, **kwargs)
    return asyncio.run(asyncio.wait_for(driver.run(), wait_s))


def test_one_reading_per_weighing_not_per_stable_line(state) -> None:
    sink = Sink()
    with PtyScale([Weighing(71.2, stable_lines=30), Weighing(71.2), Weighing(70.9)]) as sim:
        result = run(sim, sink, state, options={"max_weighings": 3})
    assert sink.weights() == [(71.2, "kg"), (71.2, "kg"), (70.9, "kg")]
    assert result.measurements == 3
    now = datetime.now(UTC)
    readings = [to_reading(d, m, c, now) for d, m, c in sink.items]
    assert len({r.id for r in readings}) == 3  # the same weight twice is still two weighings
    assert all(r.flags == [] and r.clock.judgement.value == "device" for r in readings)


def test_pounds_in_indicator_format_at_9600_8n1(state) -> None:
    sink = Sink()
    with PtyScale([Weighing(165.4, "lb")], style="indicator", baudrate=9600, bytesize=8, parity="N") as sim:
        run(sim, sink, state, baudrate=9600, options={"bytesize": 8, "parity": "N", "max_weighings": 1})
    assert sink.weights() == [(165.4, "[lb_av]")]
    reading = to_reading(*sink.items[0], datetime.now(UTC))
    assert reading.values["body_weight"].value == pytest.approx(165.4 * 0.45359237, abs=1e-6)


def test_csv_variant_and_overload_line(state) -> None:
    sink = Sink()
    with PtyScale([Weighing(82.05)], style="csv", faults=ScaleFaults(overload_before=True)) as sim:
        run(sim, sink, state, options={"max_weighings": 1})
    assert sink.weights() == [(82.05, "kg")]


def test_wrong_parity_is_a_clear_error(state) -> None:
    sink = Sink()
    with PtyScale([Weighing(71.2)]) as sim:  # the scale speaks 2400 7E1
        with pytest.raises(ProtocolError, match="wrong baud rate or parity"):
            run(sim, sink, state, options={"bytesize": 8, "parity": "N"})
    assert sink.items == []


def test_garbage_between_lines_is_survived(state) -> None:
    sink = Sink()
    with PtyScale([Weighing(64.0)], faults=ScaleFaults(garbage_before=b"\x00\x13#!\r\n")) as sim:
        run(sim, sink, state, options={"max_weighings": 1})
    assert sink.weights() == [(64.0, "kg")]


def test_cable_pulled_mid_line_keeps_the_finished_weighing_only(state) -> None:
    sink = Sink()
    # 3 idle + 4 unstable + 5 stable + 2 unstable + 3 idle = 17 lines for the first weighing.
    faults = ScaleFaults(pull_mid_line_after=20)
    with PtyScale([Weighing(71.2), Weighing(90.0)], faults=faults) as sim:
        with pytest.raises(DeviceDisconnectedError):
            run(sim, sink, state)
    assert sink.weights() == [(71.2, "kg")]
