"""The outbox on a small real disk (a size-limited tmpfs): a full disk or a spent budget refuses new
readings without losing any silently, acks still apply on a full disk (the reserve), and everything
resumes by itself when room returns. Skipped with the reason where this host cannot mount."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.contract import Ack, Reading
from gateway.drivers.base import DeviceInfo
from gateway.drivers.heart_rate_window import aggregate
from gateway.readings.normalise import to_reading
from gateway.store.disk import classify, free_bytes
from gateway.store.outbox import Outbox, OutboxFullError, kept_by_device
from tests.gateway.reading_factory import bp_reading

pytestmark = pytest.mark.integration

KIB = 1024


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (e.g. ``3m``) at ``where``; skips the test where mounting fails."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def loop_ext4(where: Path, size_mb: int = 16) -> Iterator[Path]:
    """A loop-mounted ext4 image with ``errors=remount-ro``, as a gateway's SD card is mounted."""
    image = where.with_suffix(".img")
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(where)], capture_output=True).returncode == 0
    if not mounted:
        image.unlink(missing_ok=True)
        pytest.skip(f"cannot loop-mount an ext4 image here ({made.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        image.unlink(missing_ok=True)


def fail_card(where: Path) -> None:
    """The kernel turns the filesystem read-only under open files, as ext4 does on an I/O error."""
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(where)], capture_output=True, text=True,
                            check=True).stdout.strip()
    Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("storage test\n")
    with pytest.raises(OSError):
        (where / "probe").write_text("x")


def fill_disk(directory: Path, leave: int = 0) -> Path:
    """Another program filling the disk: a file that takes every free byte but ``leave``."""
    filler = directory / "filler.bin"
    with open(filler, "ab") as handle:
        while free_bytes(directory) > leave:
            try:
                handle.write(b"\xff" * min(64 * KIB, max(4096, free_bytes(directory) - leave)))
                handle.flush()
            except OSError as err:
                assert err.errno == errno.ENOSPC
                break
    return filler


def hr_reading(index: int) -> Reading:
    """A live heart-rate window reading (no device memory behind it), built as the driver builds it."""
    from gateway.codecs.common import Measurement, Quantity

    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC) + timedelta(seconds=index)
    sample = Measurement(profile="ble.heart_rate", kind="heart_rate", values={"heart_rate": Quantity(70, "/min")},
                         device_time=None, raw=b"\x00\x46")
    strap = DeviceInfo(uid="ble:AA:BB:CC:00:00:01", transport="ble", profile="ble.heart_rate", model="strap")
    return to_reading(strap, aggregate([sample], start, start + timedelta(seconds=1)), None, start, local_tz=UTC)


def rows_on_disk(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "3m") as where:
        yield where


def test_a_full_disk_refuses_memory_readings_counts_live_ones_once_and_depth_stays_true(disk: Path) -> None:
    box = Outbox(disk / "outbox.sqlite", reserve_bytes=256 * KIB)
    assert kept_by_device(bp_reading(0)) and not kept_by_device(hr_reading(0))
    stored = 0
    with pytest.raises(OutboxFullError) as refused:
        while True:
            box.put(bp_reading(stored))
            stored += 1
    assert "stay on the device" in str(refused.value)
    assert stored > 500, "the disk filled before the test proves anything"
    # The same record offered again and again (a meter retrying its session) is one reading refused.
    for _ in range(5):
        with pytest.raises(OutboxFullError):
            box.put(bp_reading(stored))
    # Live readings cannot be given again: each is counted lost, once, and the sink does not raise.
    for index in range(7):
        assert box.put(hr_reading(index)) is False
    assert box.put(hr_reading(3)) is False  # re-offered: still 7
    stats = box.stats()
    assert (stats.refused, stats.lost, stats.waiting_on_devices) == (1, 7, 1)
    assert stats.depth == stored == rows_on_disk(disk / "outbox.sqlite")
    assert stats.full and stats.state == "full"
    assert stats.message is not None and stats.message.startswith(
        f"Storage full: {stored:,} readings waiting to upload; new readings cannot be saved".replace(",", " "))
    assert box.reserve.held, "the reserve is never spent on readings"
    box.close()


def test_acks_apply_on_a_full_disk_and_storing_resumes_without_a_restart(disk: Path) -> None:
    box = Outbox(disk / "outbox.sqlite", reserve_bytes=384 * KIB)
    box.put_many(bp_reading(i) for i in range(600))
    batch = box.take_batch("b1", 400, ack_timeout_s=30)
    assert batch is not None
    # Right after a checkpoint the WAL is empty, so an ack needs new room on the disk for its frames.
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = fill_disk(disk)  # another program takes every byte left: SQLite cannot even delete now
    with contextlib.closing(sqlite3.connect(disk / "probe.sqlite")) as probe:
        with pytest.raises(sqlite3.OperationalError) as full:
            probe.execute("CREATE TABLE t (x)")
            probe.execute("INSERT INTO t VALUES (randomblob(100000))")
    assert classify(full.value) == "full"
    with pytest.raises(OutboxFullError):
        box.put(bp_reading(10_000))
    assert box.stats().state == "full"
    outcome = box.apply_ack(Ack(batch_id="b1", accepted=batch.ids))  # gives the reserve back to apply
    assert outcome.accepted == 400 and box.depth() == 200 == rows_on_disk(disk / "outbox.sqlite")
    assert not box.reserve.held
    # The room the reserve gave back is kept for the next acks, not spent on new readings.
    with pytest.raises(OutboxFullError):
        box.put(bp_reading(10_000))
    filler.unlink()  # the other program's file is gone: room again
    box.maintain()
    assert box.reserve.held, "the reserve is made again once there is room"
    assert box.put(bp_reading(10_000)) is True
    assert box.put_many(bp_reading(20_000 + i) for i in range(50)) == 50
    assert box.stats().state in ("ok", "low")
    assert box.stats().refused == 1  # reading 10 000, refused once, stored later
    assert box.stats().waiting_on_devices == 0
    box.close()


def test_the_byte_budget_refuses_by_default_and_drop_oldest_counts_each_drop(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a.sqlite", max_bytes=256 * KIB, reserve_bytes=0)
    stored = 0
    with pytest.raises(OutboxFullError, match="budget"):
        while True:
            box.put(bp_reading(stored))
            stored += 1
    assert 100 < stored < 400 and box.ids()[0] == bp_reading(0).id  # nothing dropped
    assert box.stats().state == "full" and "budget of 256 KiB" in (box.stats().message or "")
    box.close()
    dropping = Outbox(tmp_path / "b.sqlite", max_bytes=256 * KIB, when_full="drop_oldest", reserve_bytes=0)
    dropping.put_many(bp_reading(i) for i in range(stored + 50))
    stats = dropping.stats()
    assert stats.dropped > 0 and stats.depth + stats.dropped == stored + 50
    assert bp_reading(0).id not in dropping.ids() and bp_reading(stored + 49).id in dropping.ids()
    dropping.close()


def test_the_wal_stays_small_while_a_large_backlog_builds(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", reserve_bytes=0)
    for start in range(0, 3000, 100):
        box.put_many(bp_reading(i) for i in range(start, start + 100))
    box.maintain()
    assert (tmp_path / "o.sqlite-wal").stat().st_size <= 512 * KIB
    box.close()


def test_an_outbox_whose_card_goes_read_only_says_unwritable(tmp_path: Path) -> None:
    with loop_ext4(tmp_path / "card") as card:
        box = Outbox(card / "outbox.sqlite", reserve_bytes=0)
        box.put(bp_reading(1))
        fail_card(card)
        box.maintain()
        assert box.unwritable_for() is not None
        with pytest.raises(Exception, match=r"cannot be written|not saved"):
            box.put(bp_reading(2))
        assert box.put(hr_reading(1)) is False and box.stats().lost == 1
        stats = box.stats()
        assert stats.state == "unwritable" and stats.full and "read-only" in (stats.message or "")
        assert stats.depth == 1
        box.close()


def test_the_uplink_keeps_sending_after_taking_a_batch_failed_on_a_full_disk(
        disk: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    """The bug of issue 15: the first batch taken from a full outbox raised inside the sender task and
    ended it for good while the gateway stayed connected. Now the failure shows as the uplink's error
    and sending resumes by itself when there is room."""
    import asyncio

    from gateway.config import parse_config
    from gateway.runtime import Gateway
    from tests.gateway.mqtt_acker import TestAcker
    from tests.waiting import eventually

    acker = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    config = parse_config({
        "gateway_id": unique_id, "data_dir": str(disk / "data"), "status_interval_s": 30,
        "mqtt": {"url": mqtt_broker.url, "batch_ms": 20, "ack_timeout_s": 5, "reconnect_min_s": 0.1},
        "outbox": {"reserve_bytes": 0}, "ble": {"enabled": False}, "usb": {"enabled": False}})

    async def scenario() -> None:
        gateway = Gateway(config, start_devices=False)
        await gateway.start()
        try:
            assert gateway.uplink is not None and gateway.outbox is not None
            await eventually(lambda: gateway.uplink.state.connected, 10, "connected")
            acker.acking = False
            for i in range(200):
                await gateway.submit(bp_reading(i))
            await eventually(lambda: len(acker.ids()) == 200, 10, "first readings sent")
            await asyncio.to_thread(gateway.outbox.release)  # the cloud never acked: all sendable again
            gateway.outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            filler = await asyncio.to_thread(fill_disk, disk)  # no reserve: marking a batch cannot be written
            await eventually(lambda: gateway.uplink.error is not None and "full" in gateway.uplink.error, 15,
                             "the sender's failure in the status")
            assert "sending stopped: " in (gateway.status().uplink_error or "")
            filler.unlink()
            acker.acking = True
            await eventually(lambda: gateway.outbox.depth() == 0, 20, "the backlog sent and acked after all")
            assert gateway.uplink.error is None and gateway.uplink.sender_failures >= 1
        finally:
            await gateway.stop()

    try:
        asyncio.run(scenario())
    finally:
        acker.close()
