"""Known failures of the machine around the gateway, in one plain sentence each (issue 19).

A gateway without Bluetooth, with a serial port it may not open, or without its cloud is not a bug:
it is a fact the installer can fix. :func:`plain_words` turns the exception such a fact raises (bleak's
D-Bus errors, a ``PermissionError`` on a tty) into the sentence the log shows once and the status
keeps, so the supervisor retries quietly instead of printing the same traceback for ever. An error it
does not know returns None: that one is a bug, and keeps its traceback (once).
"""

from __future__ import annotations

import errno
import traceback
from collections.abc import Iterator

DBUS_SOCKET = "/run/dbus/system_bus_socket"


def leaf_errors(err: BaseException) -> Iterator[BaseException]:
    """The errors an exception group holds (a TaskGroup wraps a scanner's failure in one), or ``err``."""
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            yield from leaf_errors(inner)
    else:
        yield err


def _raised_in(err: BaseException, *modules: str) -> bool:
    return any(any(m in (frame.filename or "") for m in modules) for frame in traceback.extract_tb(err.__traceback__))


def ble_problem(err: BaseException) -> str | None:
    """No adapter, BlueZ not running, no system D-Bus, no permission on it."""
    text = str(err)
    name = type(err).__name__
    if name == "BleakDBusError" or "org.freedesktop.DBus.Error" in text:
        if "ServiceUnknown" in text or ("org.bluez" in text and "not provided" in text):
            return ("Bluetooth is not running: the BlueZ service (bluetoothd) is not on the system D-Bus; "
                    "start it with 'systemctl start bluetooth'. BLE devices are not read until then")
        if "AccessDenied" in text:
            return ("Bluetooth is not allowed for this user: the system D-Bus refused access to BlueZ; add the "
                    "gateway's user to the 'bluetooth' group. BLE devices are not read until then")
    if name in ("BleakError", "BleakBluetoothNotAvailableError") and ("adapter" in text.lower()
                                                                     or "not available" in text.lower()):
        return ("No Bluetooth adapter found: plug in a USB Bluetooth adapter or enable the built-in one "
                "('rfkill unblock bluetooth'). BLE devices are not read until then")
    if isinstance(err, (FileNotFoundError, ConnectionRefusedError)) and _raised_in(err, "dbus_fast", "bluezdbus",
                                                                                      "dbus_next"):
        return (f"Bluetooth is not available: the system D-Bus is not running ({DBUS_SOCKET} missing), so BlueZ "
                "cannot be reached; start dbus and bluetooth. BLE devices are not read until then")
    if isinstance(err, PermissionError) and _raised_in(err, "dbus_fast", "bluezdbus", "dbus_next"):
        return ("Bluetooth is not allowed for this user: the system D-Bus refused the connection; add the "
                "gateway's user to the 'bluetooth' group. BLE devices are not read until then")
    return None


def serial_problem(err: BaseException, port: str | None = None) -> str | None:
    """A serial port the gateway's user may not open (not in ``dialout``), or one that is busy."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM):
            where = port or cause.filename or "the serial port"
            return (f"Permission denied on serial port {where}: add the gateway's user to the 'dialout' group "
                    "(or check the udev rule), then plug the device in again")
        if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
            return f"Serial port {port or cause.filename} is in use by another program"
        text = str(cause)
        if "Permission denied" in text or "[Errno 13]" in text:
            return (f"Permission denied on serial port {port or 'of this device'}: add the gateway's user to the "
                    "'dialout' group (or check the udev rule), then plug the device in again")
        cause = cause.__cause__ or cause.__context__
    return None


def plain_words(err: BaseException) -> str | None:
    """The sentence for a known failure of the machine around the gateway; None for anything else."""
    for leaf in leaf_errors(err):
        sentence = ble_problem(leaf) or serial_problem(leaf)
        if sentence:
            return sentence
    return None
