"""The ASTM and TaiDoc drivers over the HID links, the simulated meters on seqpacket socket pairs.

The drivers and the links are the gateway's own; the socket pair stands in only for the kernel's hidraw
node, keeping report boundaries as it does (the same sessions run through real hidraw in
tests/kernel/test_hidraw.py).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from firmware_sims.hid.meters import HidAstmMeter, HidTaidoc
from firmware_sims.hid.reports import ContourReports
from firmware_sims.hid.socket_node import SocketNode
from firmware_sims.serial.astm_meter import AstmFaults, GlucoseMeter, GlucoseResult
from firmware_sims.serial.taidoc import BpRecord, Faults, TaidocMeter
from gateway.drivers.astm_meter import AstmMeterDriver
from gateway.drivers.base import (
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceTimeoutError,
    SerialContext,
    SerialSession,
    SessionResult,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.serial_port import ProtocolError, SerialOpenError
from gateway.drivers.taidoc import TaidocDriver
from tests.gateway.drivers.test_astm_meter import Sink
from tests.gateway.hid.socket_links import NODES, SocketContourLink, SocketCp2110Link, plug

pytestmark = pytest.mark.unit

TAIDOC_SERIAL = "3128A0B1C2D3E4F5"


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.db")
    yield store
    store.close()


def glucose_memory(n: int) -> list[GlucoseResult]:
    base = datetime(2026, 11, 20, 7, 30)
    return [GlucoseResult(base + timedelta(hours=6 * i), 90 + 7 * i, flags=("B",) if i % 2 else ()) for i in range(n)]


def run(
    driver_class, link_class, path: str, profile: str, sink: Sink, state: DeviceStateStore, **options
) -> SessionResult:
    """A session as the USB manager starts one: the profile table's SerialSession with the product's link."""
    ctx = SerialContext(
        port_path=path,
        device=DeviceInfo(uid=f"usb:0000:0000:{path}", transport="usb", profile=profile),
        sink=sink,
        state=state,
        options=options,
        link_class=link_class,
    )
    return asyncio.run(asyncio.wait_for(SerialSession(driver_class)(ctx), 30))


def run_contour(sim: HidAstmMeter, sink: Sink, state: DeviceStateStore) -> SessionResult:
    return run(
        AstmMeterDriver,
        SocketContourLink,
        plug(sim),
        "serial.astm",
        sink,
        state,
        establish_timeout_s=5,
        frame_timeout_s=5,
    )


def test_a_contour_meter_uploads_its_memory_through_hid_reports(state) -> None:
    meter = GlucoseMeter(results=glucose_memory(6), clock_offset=timedelta(minutes=-47))
    sink = Sink()
    sim = HidAstmMeter(meter, transport="socket")
    try:
        result = run_contour(sim, sink, state)
        assert sim.finished and sim.error is None
    finally:
        sim.pull_cable()
    assert result.measurements == 6
    assert [m.values["glucose"].value for _, m, _ in sink.items] == [90, 97, 104, 111, 118, 125]
    assert all(m.values["glucose"].unit == "mg/dL" for _, m, _ in sink.items)
    device, first, clock = sink.items[0]
    assert device.serial == "7390-1163170" and device.uid.endswith(":7390-1163170")
    assert first.device_time == datetime(2026, 11, 20, 7, 30)
    assert clock is not None and abs(clock.offset + timedelta(minutes=47)) < timedelta(minutes=1)
    # Frames longer than 60 bytes crossed in several reports; nothing went unasked.
    assert max(len(frame) for frame in sim.sent.split(b"\n")) > 60
    assert sim.node is None


def test_the_meter_says_nothing_until_polled_and_the_link_polls_once(state) -> None:
    sim = HidAstmMeter(GlucoseMeter(results=glucose_memory(2)), transport="socket", enq_interval=0.05)
    sink = Sink()
    try:
        path = plug(sim)
        deadline = datetime.now() + timedelta(seconds=2)
        while sim.unpolled < 3 and datetime.now() < deadline:
            asyncio.run(asyncio.sleep(0.05))
        assert sim.unpolled >= 3 and sim.sent == b"", "an unpolled meter sends nothing"
        result = run(
            AstmMeterDriver,
            SocketContourLink,
            path,
            "serial.astm",
            sink,
            state,
            establish_timeout_s=5,
            frame_timeout_s=5,
        )
    finally:
        sim.pull_cable()
    assert result.measurements == 2


def test_a_second_download_over_hid_is_the_same_readings(state) -> None:
    meter = GlucoseMeter(results=glucose_memory(3))
    first, second = Sink(), Sink()
    for sink in (first, second):
        sim = HidAstmMeter(meter, transport="socket")
        try:
            run_contour(sim, sink, state)
        finally:
            sim.pull_cable()
    assert first.reading_ids() == second.reading_ids() and len(first.reading_ids()) == 3


def test_a_corrupted_frame_is_nakked_and_sent_again_through_the_reports(state) -> None:
    sim = HidAstmMeter(GlucoseMeter(results=glucose_memory(3)), AstmFaults(corrupt_frames={3: 2}), transport="socket")
    sink = Sink()
    try:
        result = run_contour(sim, sink, state)
    finally:
        sim.pull_cable()
    assert sim.naks == 2 and result.measurements == 3


def test_a_contour_meter_unplugged_mid_upload_keeps_what_was_acknowledged(state) -> None:
    sim = HidAstmMeter(GlucoseMeter(results=glucose_memory(5)), AstmFaults(pull_after_frames=4), transport="socket")
    sink = Sink()
    with pytest.raises(DeviceDisconnectedError):
        run_contour(sim, sink, state)
    sim.pull_cable()
    # Header, patient and two results were acknowledged before the cable went.
    assert [m.values["glucose"].value for _, m, _ in sink.items] == [90, 97]


def bp(minutes_ago: int, systolic: int) -> BpRecord:
    when = (datetime.now() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    return BpRecord(when=when, systolic=systolic, diastolic=80 - minutes_ago // 10, pulse=70)


def taidoc_meter(*records: BpRecord) -> TaidocMeter:
    meter = TaidocMeter(serial=TAIDOC_SERIAL)
    for record in records:
        meter.store(record)
    return meter


def run_taidoc(sim: HidTaidoc, sink: Sink, state: DeviceStateStore, **options) -> SessionResult:
    options.setdefault("reply_timeout_s", 0.5)
    return run(TaidocDriver, SocketCp2110Link, plug(sim), "serial.taidoc", sink, state, **options)


def test_a_taidoc_meter_behind_a_cp2110_is_read_after_the_uart_is_set_up(state) -> None:
    meter = taidoc_meter(bp(50, 121), bp(40, 132), bp(30, 143))
    sim = HidTaidoc(meter, transport="socket")
    sink = Sink()
    try:
        result = run_taidoc(sim, sink, state)
        bridge = sim.bridge
        assert bridge.enabled and bridge.purges == 1
        assert [(c.baudrate, c.parity, c.data_bits, c.stop_bits) for c in bridge.config_writes] == [(19200, 0, 3, 0)]
    finally:
        sim.pull_cable()
    assert result.measurements == 3
    assert [m.values["systolic"].value for _, m, _ in sink.items] == [121, 132, 143]
    assert [m.values["diastolic"].value for _, m, _ in sink.items] == [75, 76, 77]
    device, first, _ = sink.items[0]
    assert device.serial == TAIDOC_SERIAL and device.model == "TD-3128"
    assert first.device_time == meter.records[2].when
    assert meter.powered_off.is_set()


def test_a_cp2110_at_the_wrong_baud_rate_reads_garbage_not_readings(state) -> None:
    sim = HidTaidoc(taidoc_meter(bp(30, 120)), transport="socket")
    sink = Sink()
    try:
        with pytest.raises((DeviceTimeoutError, ProtocolError)) as failed:
            run(
                TaidocDriver,
                SocketCp2110Link,
                plug(sim),
                "serial.taidoc",
                sink,
                state,
                reply_timeout_s=0.3,
                baudrate=9600,
            )
    finally:
        sim.pull_cable()
    assert sink.items == [], failed.value
    assert sim.bridge.config_writes[0].baudrate == 9600


def test_a_cp2110_that_refuses_the_uart_config_fails_the_open_with_the_reason(state) -> None:
    sim = HidTaidoc(taidoc_meter(bp(30, 120)), transport="socket")
    try:
        with pytest.raises(SerialOpenError, match="CP2110 did not take the UART config"):
            run(TaidocDriver, SocketCp2110Link, plug(sim), "serial.taidoc", Sink(), state, baudrate=100)
    finally:
        sim.pull_cable()


def test_a_taidoc_meter_unplugged_mid_download_resumes_on_replug(state) -> None:
    meter = taidoc_meter(bp(50, 121), bp(40, 132), bp(30, 143))
    sink = Sink()
    sim = HidTaidoc(meter, Faults(unplug_after_replies=9), transport="socket")
    with pytest.raises(DeviceDisconnectedError):
        run_taidoc(sim, sink, state)
    sim.pull_cable()
    kept = len(sink.items)
    assert kept < 3
    sim = HidTaidoc(meter, transport="socket")
    try:
        run_taidoc(sim, sink, state)
    finally:
        sim.pull_cable()
    assert [m.values["systolic"].value for _, m, _ in sink.items] == [121, 132, 143]


def test_a_report_that_is_not_the_contour_layout_is_dropped_and_the_stream_goes_on(state) -> None:
    heard: list[bytes] = []
    function = ContourReports(heard.append)
    node = SocketNode(function)
    path = node.create()
    NODES[path] = node

    async def go() -> tuple[bytes, int]:
        link = SocketContourLink(path)
        await link.open()
        try:
            node.send_input(b"ABC" + bytes([200]) + bytes(60))  # a length no report can hold
            node.send_input(b"ABC")  # shorter than the header
            function.send_message(b"\x05")
            return await link.read_exactly(1, 2.0), link.bad_reports
        finally:
            await link.close()

    try:
        data, bad = asyncio.run(go())
    finally:
        node.destroy()
    assert data == b"\x05" and bad == 2
    assert heard == [b"\x04"], "the link's poll reached the meter as one EOT"
