"""The gateway's HID links over the simulator's seqpacket socket pairs (a host without /dev/uhid).

:class:`SocketReportDevice` is the host end of a :class:`~firmware_sims.hid.socket_node.SocketNode` as a
:class:`~gateway.drivers.hidraw.ReportDevice`: reports through the data pair, the feature "ioctls" through
the control pair. Everything above it (the link's reader, packing, the CP2110 set-up, the drivers) is
the code that runs on a hidraw node.
"""

from __future__ import annotations

import errno
import os

from firmware_sims.hid.socket_node import SocketNode
from gateway.drivers.hidraw import ContourHidLink, Cp2110Link
from gateway.drivers.serial_port import LineSettings

NODES: dict[str, SocketNode] = {}
"""Simulated devices by the path a driver is given (``SocketNode.path``)."""


class SocketReportDevice:
    def __init__(self, node: SocketNode) -> None:
        self._data, self._ctrl = node.host_ends
        self._data.setblocking(False)
        self._ctrl.settimeout(5.0)  # the kernel's own limit for a device's feature answer

    def fileno(self) -> int:
        return self._data.fileno()

    def read_report(self) -> bytes:
        return self._data.recv(65536)

    def write_report(self, report: bytes) -> None:
        self._data.send(report)

    def set_feature(self, report: bytes) -> None:
        self._ctrl.send(b"S" + report)
        reply = self._ctrl.recv(16)
        if reply[:1] != b"s" or reply[1]:
            raise OSError(reply[1] if len(reply) > 1 else errno.EPROTO, "the device refused the feature report")

    def get_feature(self, report_id: int, size: int) -> bytes:
        self._ctrl.send(b"G" + bytes([report_id, size]))
        reply = self._ctrl.recv(size + 2)
        if reply[:1] != b"g" or reply[1]:
            raise OSError(reply[1] if len(reply) > 1 else errno.EPROTO, "the device stalled the feature request")
        return reply[2:]

    def close(self) -> None:
        self._data.close()
        self._ctrl.close()


def open_socket_device(path: str) -> SocketReportDevice:
    node = NODES.get(path)
    if node is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return SocketReportDevice(node)


class SocketContourLink(ContourHidLink):
    def __init__(self, path: str, settings: LineSettings | None = None) -> None:
        super().__init__(path, settings, open_device=open_socket_device)


class SocketCp2110Link(Cp2110Link):
    def __init__(self, path: str, settings: LineSettings | None = None) -> None:
        super().__init__(path, settings, open_device=open_socket_device)


def plug(sim) -> str:
    """Plug a simulator with ``transport="socket"`` in and register its node; returns the path."""
    path = sim.plug_in()
    NODES[path] = sim.node
    return path
