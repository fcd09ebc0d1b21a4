"""What every driver shares: the device it talks to, the clock check at connect, and the sink.

A driver hands each record it took from a device to the sink: a decoded
:class:`~gateway.codecs.common.Measurement`, or an :class:`UnreadableRecord` for a frame its codec
could not decode. The sink returns only once the record is committed: as a reading in the outbox, or,
where it cannot become a reading (the codec or the contract refused it), in the outbox database's
device quarantine. Either way the record is durable and never read again, so a driver moves on
(acknowledges the record, asks for the next one, persists its last sequence number) exactly the same
way after both; one bad record never blocks the records after it. Only an outbox that cannot take a
reading (full with ``refuse_new``, a broken disk) raises, and then the driver must not move on.
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


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record a device sent that its codec could not decode (a ``DecodeError``), handed to the sink
    so it is quarantined with its bytes and reason instead of being dropped or blocking the device."""

    profile: str
    raw: bytes
    reason: str
    position: int | str | None = None
    """Where the record sat in the device's memory, where the driver knows it (a TaiDoc record index,
    an ASTM frame number); None where it is unknown (a glucose frame too broken to show its sequence)."""


DeviceRecord = Measurement | UnreadableRecord
"""What a driver hands to the sink."""


class MeasurementSink(Protocol):
    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        """Commit the record (as a reading, or to the device quarantine); return only when it is durable.

        Where ``state.follows_acks`` (the gateway's runtime), a driver whose records carry no sequence
        number also passes ``position=`` (its count of the device's records) so the device resumes
        from what the cloud acknowledged; other sinks are called without it."""


def undecodable(profile: str, raw: bytes, err: Exception, position: int | str | None = None) -> UnreadableRecord:
    """The :class:`UnreadableRecord` for a frame whose codec raised ``err``."""
    return UnreadableRecord(profile=profile, raw=bytes(raw), reason=f"does not decode: {err}", position=position)


def gateway_now() -> datetime:
    return datetime.now(UTC)
