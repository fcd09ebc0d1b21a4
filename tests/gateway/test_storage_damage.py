"""A damaged outbox, damaged for real (truncated, garbage pages in the middle, a corrupt header, a -wal
from another database): the gateway starts anyway, the file is moved aside (never deleted), what can be
read is salvaged, the devices' resume positions are forgotten so they are read again, and the status
says so in plain words."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.drivers.device_state import POSITION_KEYS, DeviceStateStore
from gateway.runtime import Gateway
from gateway.store.outbox import Outbox
from tests.gateway.reading_factory import bp_reading

pytestmark = pytest.mark.unit

COUNT = 400
PAGE = 4096


def build_outbox(path: Path) -> set[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    box = Outbox(path, reserve_bytes=0)
    box.put_many(bp_reading(i) for i in range(COUNT))
    box.close()  # the last connection checkpoints: everything is in the main file
    return {bp_reading(i).id for i in range(COUNT)}


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_in_the_middle(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(PAGE * 20)
        handle.write(os.urandom(PAGE * 3))


def corrupt_header(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.write(os.urandom(100))


def wal_of_another_outbox(path: Path) -> None:
    other = path.parent / "other" / "outbox.sqlite"
    other.parent.mkdir()
    box = Outbox(other, reserve_bytes=0)
    box._db.execute("PRAGMA wal_autocheckpoint=0")  # keep its readings in its WAL, as after a power cut
    box.put_many(bp_reading(i, uid="ble:0F:0F:0F:0F:0F:0F") for i in range(50))
    shutil.copy(other.with_name("outbox.sqlite-wal"), path.with_name("outbox.sqlite-wal"))
    box.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], int]] = {
    # kind: (how, at least this many readings salvaged)
    "truncated": (truncate_half, 100),
    "garbage pages": (garbage_in_the_middle, 300),
    "corrupt header": (corrupt_header, COUNT),
    "foreign wal": (wal_of_another_outbox, COUNT),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_outbox_is_moved_aside_and_salvaged(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data" / "outbox.sqlite"
    ids = build_outbox(path)
    damage, at_least = DAMAGE[kind]
    damage(path)
    damaged_bytes = path.read_bytes()
    box = Outbox(path, reserve_bytes=0)
    report = box.recovery
    assert report is not None, f"{kind}: the damage went unnoticed"
    assert report.moved_to.exists() and report.moved_to.read_bytes() == damaged_bytes  # kept, untouched
    salvaged = set(box.ids())
    assert salvaged <= ids and len(salvaged) == report.salvaged == box.depth()
    assert report.salvaged >= at_least, f"{kind}: only {report.salvaged} salvaged"
    box.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = Outbox(path, reserve_bytes=0)
    assert again.recovery is None and again.depth() == report.salvaged  # the fresh outbox is sound
    again.close()


def test_position_keys_are_the_ones_the_drivers_persist() -> None:
    from gateway.drivers.glucose_meter import LAST_SEQUENCE_KEY
    from gateway.drivers.taidoc import ANCHOR_KEY

    assert set(POSITION_KEYS) == {LAST_SEQUENCE_KEY, ANCHOR_KEY}


def test_the_gateway_starts_on_a_damaged_outbox_resets_positions_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_outbox(data / "outbox.sqlite")
    garbage_in_the_middle(data / "outbox.sqlite")
    state = DeviceStateStore(data / "device_state.sqlite")
    state.set("ble:C0:FF:EE:00:00:01", "glucose_last_sequence", 812)
    state.set("usb:1a79:6002:X", "taidoc.anchor", {"fingerprints": ["ab"], "index": 3, "count": 9})
    state.set("usb:0fcf:1008:S", "ant_hrm_channel_id", [1, 120, 1])
    state.close()
    config = parse_config({"gateway_id": "gw-damaged", "data_dir": str(data), "mqtt": {"url": "mqtt://127.0.0.1:9"},
                           "ble": {"enabled": False}, "usb": {"enabled": False}})

    async def scenario() -> str | None:
        gateway = Gateway(config, start_devices=False)
        await gateway.start()
        try:
            return gateway.status().storage_message
        finally:
            await gateway.stop()

    message = asyncio.run(scenario())
    assert message is not None and "damaged" in message and "moved aside to outbox.damaged-" in message
    assert "readings salvaged" in message and "2 devices with memory will be read again from the start" in message
    state = DeviceStateStore(data / "device_state.sqlite")
    assert state.get("ble:C0:FF:EE:00:00:01", "glucose_last_sequence") is None
    assert state.get("usb:1a79:6002:X", "taidoc.anchor") is None
    assert state.get("usb:0fcf:1008:S", "ant_hrm_channel_id") == [1, 120, 1]  # a pairing, not a position
    state.close()
    assert len(list(data.glob("outbox.damaged-*.sqlite"))) == 1
