"""What every driver shares: the device it talks to, the clock check at connect, and the sink.

A driver hands each decoded :class:`~gateway.codecs.common.Measurement` to the sink, which returns
only once the reading is committed to the outbox; a driver moves on (acknowledges a record, asks for
the next one, persists its last sequence number) only after that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.codecs.common import Measurement


class DriverError(Exception):
    """A device session failed; the supervisor logs it, shows it in the status and retries later."""


class DeviceTimeoutError(DriverError):
    """A device did not answer in time."""


class DeviceDisconnectedError(DriverError):
    """The link (radio or cable) went away mid-session."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    uid: str
    """``ble:<address>``, ``usb:<vid>:<pid>:<serial or port>``, ``ant:<device number>``."""
    transport: str
    profile: str
    model: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    firmware: str | None = None


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """The device clock compared with the gateway's at connect.

    ``device_now`` is the device's naive local time as read (None where it could not be read or is
    unset); ``gateway_now`` is the gateway's aware time at the same moment. ``was_set`` says the
    gateway wrote its own time to the device after reading it (records made before keep the old offset).
    """

    gateway_now: datetime
    device_now: datetime | None = None
    was_set: bool = False
    unset: bool = False
    """The device said its clock is unset (e.g. a time fault) or it read back as implausible."""

    @property
    def offset(self) -> timedelta | None:
        if self.device_now is None:
            return None
        local_now = self.gateway_now.astimezone().replace(tzinfo=None)
        return self.device_now - local_now


@dataclass(frozen=True, slots=True)
class SessionResult:
    """Summary a driver returns when a session ends normally."""

    measurements: int = 0
    battery: int | None = None
    clock: ClockCheck | None = None
    notes: list[str] = field(default_factory=list)


class MeasurementSink(Protocol):
    async def __call__(self, device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None) -> None:
        """Commit the measurement to the outbox; return only when it is durable."""


def gateway_now() -> datetime:
    return datetime.now(UTC)
