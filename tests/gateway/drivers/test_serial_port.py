"""SerialLink over a real pseudo-terminal: reads with timeouts, a closed master is a pulled cable."""

from __future__ import annotations

import asyncio
import os
import tty

import pytest

from gateway.drivers.base import DeviceDisconnectedError, DeviceTimeoutError
from gateway.drivers.serial_port import SerialLink, SerialOpenError

pytestmark = pytest.mark.unit


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_bytes_written_by_the_device_are_read_through_the_port(pty_pair) -> None:
    master, path = pty_pair

    async def scenario() -> tuple[bytes, bytes, bytes]:
        async with SerialLink(path) as link:
            os.write(master, b"ST,+070.50 kg\r\nrest")
            line = await link.read_until(b"\r\n", wait_s=2)
            rest = await link.read_exactly(4, wait_s=2)
            await link.write(b"\x06")
            echoed = await asyncio.to_thread(os.read, master, 1)
            return line, rest, echoed

    line, rest, echoed = asyncio.run(scenario())
    assert line == b"ST,+070.50 kg\r\n"
    assert rest == b"rest"
    assert echoed == b"\x06"


def test_silence_is_a_timeout(pty_pair) -> None:
    _, path = pty_pair

    async def scenario() -> None:
        async with SerialLink(path) as link:
            await link.read_exactly(1, wait_s=0.2)

    with pytest.raises(DeviceTimeoutError):
        asyncio.run(scenario())


def test_closing_the_master_is_a_pulled_cable(pty_pair) -> None:
    master, path = pty_pair

    async def scenario() -> bytes:
        async with SerialLink(path) as link:
            os.write(master, b"partial")
            first = await link.read_exactly(7, wait_s=2)
            os.close(master)
            await link.read_exactly(1, wait_s=5)
            return first

    with pytest.raises(DeviceDisconnectedError):
        asyncio.run(scenario())


def test_a_missing_port_is_an_open_error(tmp_path) -> None:
    async def scenario() -> None:
        await SerialLink(str(tmp_path / "ttyUSB9")).open()

    with pytest.raises(SerialOpenError):
        asyncio.run(scenario())
