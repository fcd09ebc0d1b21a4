"""A simulated HID device on a pair of ``SOCK_SEQPACKET`` sockets, for hosts without ``/dev/uhid``.

A seqpacket socket keeps message boundaries as a hidraw node keeps report boundaries: one ``send`` is one
report, one ``recv`` one report, and a closed peer reads as end of file. The *data* pair carries reports
(host ``write`` = output report, device ``send_input`` = input report); the *control* pair stands in for
the feature ioctls, which a socket has not: the host sends ``b"S" + report`` (set) or ``b"G" + report
ID + size`` (get), the device answers ``b"s" + err`` or ``b"g" + err + report``, err 0 or an errno.
The device's side here is the same :class:`~firmware_sims.hid.reports.HidFunction` the uhid node
serves; only the kernel in between is missing.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading

from firmware_sims.hid.reports import HidFunction


class SocketNode:
    """The device's ends of the two pairs; ``host_ends`` are what a host-side report device uses."""

    def __init__(self, function: HidFunction) -> None:
        self.function = function
        self.opened = threading.Event()
        self.path: str | None = None
        self.error: BaseException | None = None
        self._data_host, self._data_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctrl_host, self._ctrl_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def host_ends(self) -> tuple[socket.socket, socket.socket]:
        """(data, control) sockets of the host's side."""
        return self._data_host, self._ctrl_host

    def create(self, timeout: float = 5.0) -> str:
        self.function.emit = self.send_input
        self.path = f"socket-hid:{id(self):x}"
        self.opened.set()
        self._thread = threading.Thread(target=self._serve, name=f"socket hid {self.path}", daemon=True)
        self._thread.start()
        return self.path

    def send_input(self, report: bytes) -> None:
        try:
            self._data_dev.send(report)
        except OSError as err:
            raise BrokenPipeError("the device is unplugged") from err

    def destroy(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        for sock in (self._data_dev, self._ctrl_dev):
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._data_dev, self._ctrl_dev], [], [], 0.05)
                for sock in ready:
                    message = sock.recv(65536)
                    if not message:
                        return  # the host closed its end
                    if sock is self._data_dev:
                        self.function.on_output(message)
                    else:
                        self._control(message)
        except OSError as err:
            if not self._stop.is_set():
                self.error = err

    def _control(self, message: bytes) -> None:
        if message[:1] == b"S":
            took = self.function.on_set_feature(message[1:])
            self._ctrl_dev.send(b"s" + bytes([0 if took else errno.EIO]))
        elif message[:1] == b"G" and len(message) >= 3:
            answer = self.function.on_get_feature(message[1])
            if answer is None:
                self._ctrl_dev.send(b"g" + bytes([errno.EIO]))
            else:
                self._ctrl_dev.send(b"g\x00" + answer[: message[2]])
