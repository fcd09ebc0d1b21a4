"""Real HID devices from user space: ``/dev/uhid`` (``Documentation/hid/uhid.rst``).

``UHID_CREATE2`` with a report descriptor makes the kernel add a HID device on the bus we name (USB), and
hid-generic gives it a ``/dev/hidrawN`` node, exactly as a plugged-in USB HID device gets one; its
sysfs ``uevent`` carries our vendor/product ids (``HID_ID``), name, phys and uniq (the USB serial number).
What the host writes arrives as ``UHID_OUTPUT``; its feature ioctls arrive as ``UHID_GET_REPORT`` /
``UHID_SET_REPORT`` and wait (up to 5 s, in the kernel) for our reply; ``UHID_INPUT2`` is a report
the device sends. ``UHID_DESTROY`` (or closing the fd) is the cable pulled: the node goes away and the
host's reads fail with EIO.

The event layout is ``struct uhid_event`` of ``include/uapi/linux/uhid.h`` (packed).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import struct
import threading
import time
from pathlib import Path

from firmware_sims.hid.reports import HidFunction

UHID_PATH = "/dev/uhid"
SYSFS_HIDRAW = Path("/sys/class/hidraw")
BUS_USB = 0x03
DATA_MAX = 4096
EVENT_SIZE = 4 + 128 + 64 + 64 + 2 + 2 + 4 * 4 + DATA_MAX  # the union's largest member is create2

UHID_DESTROY, UHID_START, UHID_STOP, UHID_OPEN, UHID_CLOSE, UHID_OUTPUT = 1, 2, 3, 4, 5, 6
UHID_GET_REPORT, UHID_GET_REPORT_REPLY, UHID_CREATE2, UHID_INPUT2 = 9, 10, 11, 12
UHID_SET_REPORT, UHID_SET_REPORT_REPLY = 13, 14
UHID_FEATURE_REPORT = 0

_counter = itertools.count(1)


def uhid_available() -> str | None:
    """None where ``/dev/uhid`` can be opened read-write, else why not."""
    try:
        fd = os.open(UHID_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"{UHID_PATH}: {err.strerror}"
    os.close(fd)
    return None


class UhidNode:
    """One simulated USB HID device in the kernel, answering through a :class:`HidFunction`."""

    def __init__(
        self, function: HidFunction, *, vid: int, pid: int, name: str, serial: str = "", version: int = 0x0100
    ) -> None:
        self.function = function
        self.vid, self.pid, self.name, self.serial, self.version = vid, pid, name, serial, version
        self.phys = f"rpm-sim-{os.getpid()}-{next(_counter)}"
        self.opened = threading.Event()
        self.path: str | None = None
        self.error: BaseException | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    def create(self, timeout: float = 5.0) -> str:
        """Add the device; returns its hidraw node's path once the node exists."""
        descriptor = self.function.descriptor
        if len(descriptor) > DATA_MAX:
            raise ValueError(f"report descriptor of {len(descriptor)} bytes exceeds {DATA_MAX}")
        self._fd = os.open(UHID_PATH, os.O_RDWR | os.O_CLOEXEC)
        self.function.emit = self.send_input
        event = struct.pack(
            "<I128s64s64sHHIIII4096s",
            UHID_CREATE2,
            self.name.encode()[:127],
            self.phys.encode(),
            self.serial.encode()[:63],
            len(descriptor),
            BUS_USB,
            self.vid,
            self.pid,
            self.version,
            0,
            descriptor,
        )
        self._write(event)
        self._thread = threading.Thread(target=self._serve, name=f"uhid {self.phys}", daemon=True)
        self._thread.start()
        self.path = self._wait_for_node(timeout)
        return self.path

    def _wait_for_node(self, timeout: float) -> str:
        # The kernel adds the HID device from a worker, so the node appears a moment after CREATE2.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for entry in SYSFS_HIDRAW.iterdir():
                    uevent = (entry / "device" / "uevent").read_text()
                    if f"HID_PHYS={self.phys}\n" in uevent + "\n" and Path("/dev", entry.name).exists():
                        return str(Path("/dev", entry.name))
            time.sleep(0.01)
        raise TimeoutError(f"no hidraw node for {self.phys} within {timeout} s")

    def send_input(self, report: bytes) -> None:
        """One input report to the host (report ID first where the descriptor numbers them)."""
        if self._fd is None:
            raise BrokenPipeError("the device is destroyed")
        self._write(struct.pack("<IH4096s", UHID_INPUT2, len(report), report))

    def destroy(self) -> None:
        """Unplug: the hidraw node goes away and the host's next read fails with EIO."""
        self._stop.set()
        fd = self._fd
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self._write(struct.pack("<I", UHID_DESTROY))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        self._fd = None
        with contextlib.suppress(OSError):
            os.close(fd)

    def _write(self, event: bytes) -> None:
        assert self._fd is not None
        with self._write_lock:
            os.write(self._fd, event)

    def _serve(self) -> None:
        fd = self._fd
        assert fd is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready or self._stop.is_set():
                    continue
                self._handle(os.read(fd, EVENT_SIZE))
        except OSError as err:
            if not self._stop.is_set():
                self.error = err
        except Exception as err:  # a simulator bug must show up in the test, not vanish with the thread
            self.error = err
            raise

    def _handle(self, event: bytes) -> None:
        (kind,) = struct.unpack_from("<I", event)
        if kind == UHID_OPEN:
            self.opened.set()
        elif kind == UHID_CLOSE:
            self.opened.clear()
        elif kind == UHID_OUTPUT:
            data, size, _rtype = struct.unpack_from("<4096sHB", event, 4)
            self.function.on_output(data[:size])
        elif kind == UHID_GET_REPORT:
            request_id, rnum, rtype = struct.unpack_from("<IBB", event, 4)
            answer = self.function.on_get_feature(rnum) if rtype == UHID_FEATURE_REPORT else None
            err = 0 if answer is not None else errno.EIO
            self._write(
                struct.pack("<IIHH4096s", UHID_GET_REPORT_REPLY, request_id, err, len(answer or b""), answer or b"")
            )
        elif kind == UHID_SET_REPORT:
            request_id, rnum, rtype, size = struct.unpack_from("<IBBH", event, 4)
            data = event[4 + 8 : 4 + 8 + size]
            took = rtype == UHID_FEATURE_REPORT and self.function.on_set_feature(data)
            self._write(struct.pack("<IIH", UHID_SET_REPORT_REPLY, request_id, 0 if took else errno.EIO))
