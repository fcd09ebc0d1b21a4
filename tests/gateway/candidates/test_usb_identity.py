"""Issue 19, item 2: a USB meter confirmed before its serial was known keeps one identity end to end.

A Contour-style meter whose USB descriptor has no serial number is proposed under its port
(``usb:1a79:6002:/dev/pts/N``); it tells its own serial only in the ASTM header of a session. The cloud
binds and assigns the uid it confirmed, so every reading must carry that uid: on the first session, after
a restart of the gateway, and after the meter is plugged into another port. A second meter of the same
model is a device of its own, and a meter nobody confirmed (or one that was ignored) gives nothing.

Real pseudo-terminals with the simulated meter (``firmware_sims.serial.astm_meter``), the real USB manager,
enrolment store, intake and SQLite outbox; the wire readings are read back from the outbox, as the uplink
would send them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from firmware_sims.serial.pty_device import PtyDevice
from firmware_sims.serial.taidoc import RECORD_COUNT, RECORD_TIME, BpRecord, PtyTaidoc, TaidocMeter
from gateway.contract import Reading
from gateway.discovery.enrolment import EnrolmentStore
from gateway.discovery.usb import UsbManager
from gateway.discovery.usb_config import UsbConfig
from gateway.discovery.usb_devices import PortFacts
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.taidoc import ANCHOR_KEY
from gateway.readings.intake import RecordIntake
from gateway.store.outbox import Outbox

pytestmark = pytest.mark.unit

VID, PID = 0x1A79, 0x6002
"""Ascensia's vendor id (the profile table's Contour entry matches any of its products)."""
CONFIG = UsbConfig(poll_interval_s=0.05)
EOT = b"\x04"
BASE = datetime.now().replace(second=0, microsecond=0) - timedelta(days=2)


def meter(serial: str, *values: float, start: int = 0) -> PtyAstmMeter:
    results = [GlucoseResult(BASE + timedelta(hours=start + i), v) for i, v in enumerate(values)]
    return PtyAstmMeter(GlucoseMeter(results=results, serial=serial))


class Hub:
    """The USB ports pyserial would list: each plugged-in simulated meter, with no USB serial number."""

    def __init__(self, vid: int = VID, pid: int = PID, product: str = "Contour USB") -> None:
        self.meters: list[PtyDevice] = []
        self.vid, self.pid, self.product = vid, pid, product

    def plug(self, sim: PtyDevice) -> str:
        if sim not in self.meters:
            self.meters.append(sim)
        return sim.plug_in()

    def list_ports(self) -> list[PortFacts]:
        return [PortFacts(m.slave_path, vid=self.vid, pid=self.pid, serial_number=None, product=self.product)
                for m in list(self.meters) if m.plugged_in and m.slave_path]

    def unplug_all(self) -> None:
        for sim in self.meters:
            if sim.plugged_in:
                sim.pull_cable()


class FixedSocket(Hub):
    """One USB socket with a stable path (as ``/dev/serial/by-path`` names it), whichever meter is in it."""

    def __init__(self, link: str) -> None:
        super().__init__()
        self.link = link

    def list_ports(self) -> list[PortFacts]:
        return [PortFacts(self.link, vid=VID, pid=PID)] if os.path.exists(self.link) else []


def port_uid(path: str, vid: int = VID, pid: int = PID) -> str:
    return f"usb:{vid:04x}:{pid:04x}:{path}"


def own_uid(serial: str, vid: int = VID, pid: int = PID) -> str:
    return f"usb:{vid:04x}:{pid:04x}:{serial}"


@contextmanager
def gateway(tmp_path: Path, hub: Hub) -> Iterator[tuple[EnrolmentStore, Outbox, Callable[[], UsbManager]]]:
    """The gateway's stores on disk (opened anew each time: a restart) and a manager factory."""
    store = EnrolmentStore(tmp_path / "enrolment.sqlite")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    state = DeviceStateStore(tmp_path / "state.sqlite")
    try:
        yield store, outbox, lambda: UsbManager(CONFIG, RecordIntake(outbox), state, list_ports=hub.list_ports,
                                                enrolment=store)
    finally:
        state.close()
        outbox.close()
        store.close()


async def until(condition: Callable[[], object], what: str, within: float = 10.0) -> None:
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - the manager polls ports; there is no event to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def run(manager: UsbManager, scenario: Callable[[], object]) -> None:
    async def main() -> None:
        task = asyncio.create_task(manager.run())
        try:
            await scenario()  # type: ignore[misc]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def readings(outbox: Outbox) -> list[Reading]:
    batch = outbox.take_batch(f"look-{os.urandom(4).hex()}", 1000, 3600)
    found = [] if batch is None else [Reading.model_validate_json(p) for p in batch.payloads]
    outbox.release()
    return found


def stored(outbox: Outbox) -> int:
    return outbox.sendable_count(3600, 1000)


def test_a_meter_confirmed_by_its_port_keeps_that_uid_after_a_restart_and_on_another_port(tmp_path: Path) -> None:
    hub = Hub()
    sim = meter("7390-1163170", 101, 102, 103)
    try:
        first_path = hub.plug(sim)
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def confirm_by_port() -> None:
                await until(store.candidates, "the meter proposed")
                [candidate] = store.candidates()
                assert candidate.uid == port_uid(first_path)  # its serial is not known yet: the port's uid
                await asyncio.sleep(0.3)
                assert manager.sessions_started == 0 and not sim.host_opened()  # not opened before confirmation
                store.confirm(candidate.uid, source="local")
                await until(lambda: stored(outbox) == 3 and sim.finished, "the confirmed meter's readings")

            run(manager, confirm_by_port)
            got = readings(outbox)
            assert {r.device.uid for r in got} == {port_uid(first_path)}
            assert {r.device.serial for r in got} == {"7390-1163170"}  # the meter's own serial, for the record
            first_ids = {r.id for r in got}

        # The meter goes to another USB port (a new tty) and the gateway restarts in between: the
        # identity learned on the first session is on disk, not in the manager's memory.
        sim.pull_cable()
        spacer = os.openpty()  # keeps the old pts number taken, so the meter really gets another port
        try:
            sim.meter.results.append(GlucoseResult(BASE + timedelta(hours=10), 150))
            second_path = hub.plug(sim)
        finally:
            for fd in spacer:
                os.close(fd)
        assert second_path != first_path
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            [learned] = store.identities()
            assert (learned.device_uid, learned.confirmed_uid) == (own_uid("7390-1163170"), port_uid(first_path))
            manager = new_manager()

            async def moved() -> None:
                await until(lambda: sim.finished, "the moved meter's upload")
                await until(lambda: stored(outbox) == 4, "its one new reading")

            run(manager, moved)
            got = readings(outbox)
            assert store.candidates() == []  # the same confirmed device: nothing to confirm again
            # The three old records, sent again from the meter's memory, have the same ids: one device.
            assert {r.device.uid for r in got} == {port_uid(first_path)}
            assert first_ids < {r.id for r in got} and len(got) == 4
    finally:
        hub.unplug_all()


def test_two_identical_meters_stay_two_and_the_second_is_read_only_once_confirmed(tmp_path: Path) -> None:
    hub = Hub()
    mine, spouse = meter("7390-0000001", 110, 111), meter("7390-0000002", 210, 211, 212, start=5)
    try:
        mine_path = hub.plug(mine)
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(store.candidates, "the first meter proposed")
                store.confirm(port_uid(mine_path), source="local")
                await until(lambda: stored(outbox) == 2, "the first meter's readings")
                hub.plug(spouse)
                # Not confirmed itself, but of a kind the gateway knows by serial: opened only to say who it
                # is, stopped after the header (receiver interrupt), proposed under its own serial.
                await until(lambda: store.candidate(own_uid("7390-0000002")) is not None, "the second meter proposed")
                assert [c.uid for c in store.candidates()] == [own_uid("7390-0000002")]
                await until(lambda: spouse.sent.endswith(EOT), "the second meter ending its transfer")
                # The header was not acknowledged: the meter never sent a result record.
                assert b"R|" not in spouse.sent and spouse.transfers == 0 and stored(outbox) == 2
                store.confirm(own_uid("7390-0000002"), source="local")
                # A meter that pushes its memory once per plug-in: plugged in again, it sends it.
                spouse.pull_cable()
                hub.plug(spouse)
                await until(lambda: stored(outbox) == 5 and spouse.finished, "the second meter's readings")

            run(manager, scenario)
            got = readings(outbox)
    finally:
        hub.unplug_all()
    by_uid: dict[str, set[float]] = {}
    for r in got:
        by_uid.setdefault(r.device.uid, set()).add(r.values["glucose"].value)  # type: ignore[arg-type]
    assert by_uid == {port_uid(mine_path): {110, 111}, own_uid("7390-0000002"): {210, 211, 212}}


def test_a_taidoc_meter_resumes_under_its_confirmed_uid_and_a_second_is_read_once_confirmed(tmp_path: Path) -> None:
    # TaiDoc meters answer requests (no push): the second one is read as soon as it is confirmed.
    vid, pid = 0x10C4, 0xEA80
    hub = Hub(vid, pid, "CP2110 HID USB-to-UART Bridge")
    when = datetime.now().replace(second=0, microsecond=0) - timedelta(hours=5)
    first, second = TaidocMeter(serial="3128000000000001"), TaidocMeter(serial="3128000000000002")
    for meter_, systolic in ((first, 121), (first, 122), (second, 141)):
        meter_.store(BpRecord(when + timedelta(minutes=systolic), systolic, 80, 70))
    cables = [PtyTaidoc(first), PtyTaidoc(second), PtyTaidoc(first)]
    try:
        first_path = hub.plug(cables[0])
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(store.candidates, "the first meter proposed")
                store.confirm(port_uid(first_path, vid, pid), source="local")
                await until(lambda: stored(outbox) == 2, "its two readings")
                second.requests.clear()
                hub.plug(cables[1])
                second_uid = own_uid("3128000000000002", vid, pid)
                await until(lambda: store.candidate(second_uid) is not None, "the second meter proposed")
                await asyncio.sleep(0.3)
                # It said who it is and was asked nothing more: no record count, no record.
                assert RECORD_COUNT not in second.requests and RECORD_TIME not in second.requests
                assert stored(outbox) == 2
                store.confirm(second_uid, source="local")
                await until(lambda: stored(outbox) == 3, "the second meter's reading, without a re-plug")
                # The first meter, on a third port with one new record: read under its confirmed uid.
                cables[0].pull_cable()
                first.store(BpRecord(when + timedelta(minutes=200), 123, 81, 71))
                spacer = os.openpty()
                hub.plug(cables[2])
                for fd in spacer:
                    os.close(fd)
                await until(lambda: stored(outbox) == 4, "the moved meter's new reading")

            run(manager, scenario)
            got = readings(outbox)
    finally:
        for cable in cables:
            if cable.plugged_in:
                cable.pull_cable()
    by_uid: dict[str, list[float]] = {}
    for r in got:
        by_uid.setdefault(r.device.uid, []).append(r.values["systolic"].value)  # type: ignore[arg-type]
    assert {k: sorted(v) for k, v in by_uid.items()} == {
        port_uid(first_path, vid, pid): [121, 122, 123], own_uid("3128000000000002", vid, pid): [141]}
    # Where the next download resumes is kept under the uid the readings carry, never the meter's own.
    state = DeviceStateStore(tmp_path / "state.sqlite")
    try:
        assert state.get(port_uid(first_path, vid, pid), ANCHOR_KEY) is not None
        assert state.get(own_uid("3128000000000001", vid, pid), ANCHOR_KEY) is None
    finally:
        state.close()


def test_another_meter_on_a_confirmed_port_is_not_read_as_the_confirmed_one(tmp_path: Path) -> None:
    hub = FixedSocket(str(tmp_path / "ttyContour"))
    link = hub.link  # a fixed path (as /dev/serial/by-path names a USB socket)
    mine = PtyAstmMeter(GlucoseMeter(results=[GlucoseResult(BASE, 120)], serial="7390-0000011"), link_path=link)
    other = PtyAstmMeter(GlucoseMeter(results=[GlucoseResult(BASE, 220)], serial="7390-0000012"), link_path=link)
    try:
        mine.plug_in()
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(store.candidates, "the meter proposed")
                store.confirm(port_uid(link), source="local")
                await until(lambda: stored(outbox) == 1 and mine.finished, "the confirmed meter's reading")
                mine.pull_cable()
                other.plug_in()  # the same socket, another meter
                await until(lambda: store.candidate(own_uid("7390-0000012")) is not None, "the other meter proposed")
                await asyncio.sleep(0.3)
                assert other.transfers == 0 and stored(outbox) == 1

            run(manager, scenario)
            got = readings(outbox)
    finally:
        mine.pull_cable()
        other.pull_cable()
    assert [(r.device.uid, r.device.serial) for r in got] == [(port_uid(link), "7390-0000011")]


def test_an_ignored_meter_is_never_read_on_any_port(tmp_path: Path) -> None:
    hub = Hub()
    mine, ignored = meter("7390-0000021", 130), meter("7390-0000022", 230, 231)
    try:
        mine_path = hub.plug(mine)
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(store.candidates, "the meter proposed")
                store.confirm(port_uid(mine_path), source="local")
                await until(lambda: stored(outbox) == 1, "the confirmed meter's reading")
                hub.plug(ignored)
                await until(lambda: store.candidate(own_uid("7390-0000022")) is not None, "the other meter proposed")
                store.ignore(own_uid("7390-0000022"), source="local")
                for _ in range(2):  # plugged in again, into another port each time
                    ignored.pull_cable()
                    spacer = os.openpty()
                    hub.plug(ignored)
                    for fd in spacer:
                        os.close(fd)
                    await until(lambda: ignored.sent.endswith(EOT), "the ignored meter stopped after its header")
                    await asyncio.sleep(0.3)
                    assert b"R|" not in ignored.sent and ignored.transfers == 0
                    assert store.candidates() == [] and stored(outbox) == 1

            run(manager, scenario)
            got = readings(outbox)
    finally:
        hub.unplug_all()
    assert [r.device.uid for r in got] == [port_uid(mine_path)]


def test_an_ignored_port_candidate_is_never_opened(tmp_path: Path) -> None:
    hub = Hub()
    sim = meter("7390-0000031", 140, 141)
    try:
        path = hub.plug(sim)
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(store.candidates, "the meter proposed")
                store.ignore(port_uid(path), source="local")
                await asyncio.sleep(0.5)
                assert manager.sessions_started == 0 and not sim.host_opened() and stored(outbox) == 0
                assert store.candidates() == []

            run(manager, scenario)
    finally:
        hub.unplug_all()


def test_the_identity_rules_of_the_store(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite")
    port_a, port_b = port_uid("/dev/ttyACM0"), port_uid("/dev/ttyACM1")
    for uid in (port_a, port_b):
        store.enrol(uid, profile="serial.astm", source="local")
    # Nothing learned yet: a meter of this kind elsewhere is not looked for.
    assert not store.knows_meters_like(port_uid("/dev/ttyACM2"), "serial.astm")
    assert store.admit(own_uid("S1"), via=port_a, profile="serial.astm").uid == port_a  # learned
    assert store.admit(own_uid("S1"), via=port_b, profile="serial.astm").uid == port_a  # the meter, not the port
    assert store.admit(own_uid("S2"), via=port_b, profile="serial.astm").uid == port_b  # port_b's own meter
    assert store.admit(own_uid("S3"), via=port_a, profile="serial.astm").reason == "candidate"  # port_a is S1's
    assert store.admit(own_uid("S3"), via=None, profile="serial.astm").uid is None
    assert store.knows_meters_like(port_uid("/dev/ttyACM2"), "serial.astm")
    assert not store.knows_meters_like(port_uid("/dev/ttyACM2"), "serial.taidoc")
    assert not store.knows_meters_like("usb:10c4:ea80:/dev/ttyUSB0", "serial.astm")
    store.close()
    store = EnrolmentStore(tmp_path / "e.sqlite")  # durable
    assert store.admit(own_uid("S1"), via=None, profile="serial.astm").uid == port_a
    assert [d for _, _, d, _ in store.history(port_a)] == ["confirmed", "identified"]
    store.ignore(port_a, source="config")  # the workspace ignored the device: its meter is not read anywhere
    assert store.admit(own_uid("S1"), via=port_b, profile="serial.astm").reason == "ignored"
    assert not store.admits(own_uid("S1"))
    store.remove(port_b, source="local")  # unpaired: its meter is a stranger again
    assert store.identities(port_b) == [] and not store.admits(own_uid("S2"))
    store.enrol(own_uid("S3"), profile="serial.astm", source="config")  # confirmed under its own serial
    assert store.admit(own_uid("S3"), via=port_a, profile="serial.astm").uid == own_uid("S3")


def test_rpm_gateway_pair_leaves_a_port_of_a_known_kind_to_the_running_service(tmp_path: Path) -> None:
    # `pair` cannot open ports; the service lets such a meter say who it is instead of proposing its port.
    from gateway.discovery.usb import propose_plugged_in

    store = EnrolmentStore(tmp_path / "e.sqlite")
    ports = [PortFacts("/dev/ttyACM0", vid=VID, pid=PID), PortFacts("/dev/ttyUSB3", vid=0x10C4, pid=0xEA80)]
    assert propose_plugged_in(CONFIG, store, ports) == 2  # nothing known yet: both ports are proposed
    store.confirm(port_uid("/dev/ttyACM0"), source="pair")
    store.admit(own_uid("S1"), via=port_uid("/dev/ttyACM0"), profile="serial.astm")
    moved = [PortFacts("/dev/ttyACM1", vid=VID, pid=PID), PortFacts("/dev/ttyUSB3", vid=0x10C4, pid=0xEA80)]
    assert propose_plugged_in(CONFIG, store, moved) == 1  # the TaiDoc port again; the Contour is left alone
    assert {c.uid for c in store.candidates()} == {"usb:10c4:ea80:/dev/ttyUSB3"}
    store.close()


def test_two_meters_plugged_in_before_any_decision_end_as_one_entry_each(tmp_path: Path) -> None:
    hub = Hub()
    mine, spouse = meter("7390-0000041", 150), meter("7390-0000042", 250)
    try:
        mine_path, spouse_path = hub.plug(mine), hub.plug(spouse)
        with gateway(tmp_path, hub) as (store, outbox, new_manager):
            manager = new_manager()

            async def scenario() -> None:
                await until(lambda: len(store.candidates()) == 2, "both ports proposed")
                assert {c.uid for c in store.candidates()} == {port_uid(mine_path), port_uid(spouse_path)}
                store.confirm(port_uid(mine_path), source="local")
                # Once the first meter is known by its serial, the other port is asked who is there: its
                # port entry gives way to the meter's own, so a person decides once per meter.
                await until(lambda: [c.uid for c in store.candidates()] == [own_uid("7390-0000042")],
                            "the second meter's port entry replaced by its own")
                await until(lambda: stored(outbox) == 1 and mine.finished, "the first meter's reading")
                await asyncio.sleep(0.3)
                assert b"R|" not in spouse.sent and stored(outbox) == 1

            run(manager, scenario)
            got = readings(outbox)
    finally:
        hub.unplug_all()
    assert [r.device.uid for r in got] == [port_uid(mine_path)]
