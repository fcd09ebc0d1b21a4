"""What every driver shares: the device it talks to, the clock check at connect, the sink, and the
one shape a driver has in the profile table (:mod:`gateway.profiles`).

A driver hands each record it took from a device to the sink: a decoded
:class:`~gateway.codecs.common.Measurement`, or an :class:`UnreadableRecord` for a frame its codec
could not decode. The sink returns only once the record is committed: as a reading in the outbox, or,
where it cannot become a reading (the codec or the contract refused it), in the outbox database's
device quarantine. Either way the record is durable and never read again, so a driver moves on
(acknowledges the record, asks for the next one, persists its last sequence number) exactly the same
way after both; one bad record never blocks the records after it. Only an outbox that cannot take a
reading (full with ``refuse_new``, a broken disk) raises, and then the driver must not move on.

A driver, as the profile table holds it, is a :class:`SessionDriver`: ``await driver(ctx)`` runs one
session given its transport's context and returns a :class:`SessionResult`. BLE drivers are that
already (a module's ``run_session(ctx: BleContext)``, called once the link is up); serial drivers are
:class:`~gateway.drivers.serial_port.SerialDriver` classes, which :class:`SerialSession` adapts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, TypeVar

from gateway.codecs.common import GatewayError, Measurement


class DriverError(GatewayError):
    """A device session failed; the supervisor logs it, shows it in the status and retries later."""


class DeviceTimeoutError(DriverError):
    """A device did not answer in time."""


class DeviceDisconnectedError(DriverError):
    """The link (radio or cable) went away mid-session."""


class DeviceNotAdmittedError(DriverError):
    """The device told who it is and this gateway may not read it (not confirmed, or ignored): the session
    stops before any of its records is taken. ``uid`` is the identity it reported; ``reason`` is
    ``candidate`` (proposed, waiting for a person), ``ignored``, or ``unidentified`` (a port opened only
    to learn who is there sent a record before saying so)."""

    def __init__(self, message: str, *, uid: str, reason: str) -> None:
        super().__init__(message)
        self.uid = uid
        self.reason = reason


IdentityCheck = Callable[["DeviceInfo"], "DeviceInfo"]
"""Given the identity a device reported mid-session (``usb:<vid>:<pid>:<its serial>``), the device its
records are filed under (the confirmed uid); raises :class:`DeviceNotAdmittedError` for one not to read."""


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


# Clock plausibility, shared by the drivers that judge a device clock and by normalisation.
# A device clock within this of the gateway's is taken as right: small drift is not worth a correction
# that would move times a patient remembers.
CLOCK_TOLERANCE = timedelta(minutes=2)
# Device times before this are an unset clock (devices reset to 2000-01-01 or their firmware date).
EARLIEST_PLAUSIBLE = datetime(2010, 1, 1)
# A corrected time further than this in the future is implausible.
FUTURE_TOLERANCE = timedelta(minutes=10)


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


ContextT = TypeVar("ContextT", contravariant=True)


class SessionDriver(Protocol[ContextT]):
    """The one driver shape: run a session with the device ``ctx`` reaches, return how it went."""

    def __call__(self, ctx: ContextT, /) -> Awaitable[SessionResult]: ...


@dataclass
class SerialContext:
    """What a serial driver's session is given: the port to open, the device and where records go."""

    port_path: str
    device: DeviceInfo
    """The port's provisional identity; once the session ends it is the device's final one (a meter that
    reports its serial number changes its uid mid-session)."""
    sink: MeasurementSink
    state: Any
    """The device-state store (download positions) the driver resumes from."""
    baudrate: int | None = None
    local_tz: tzinfo | None = None
    options: dict[str, Any] = field(default_factory=dict)
    announce: Callable[[DeviceInfo], Awaitable[None]] | None = None
    """Called as the session starts with a device whose uid is already final; not called for a device
    that identifies itself (its status would otherwise appear under the port's uid too)."""
    check_identity: IdentityCheck | None = None
    """For a device that identifies itself: called once it has, before any record is taken (issue 19:
    the uid its readings carry is the one it was confirmed under, wherever it is plugged in)."""
    link_class: type[Any] | None = None
    """The link the driver opens instead of a serial port (a ``SerialLink`` subclass: the HID report links
    of :mod:`gateway.drivers.hidraw`); None: the driver's own."""


class _SerialDriver(Protocol):
    device: DeviceInfo
    identifies_itself: bool
    check_identity: IdentityCheck | None
    link_class: type[Any]

    async def run(self) -> SessionResult: ...


class SerialDriverClass(Protocol):
    """A :class:`~gateway.drivers.serial_port.SerialDriver` subclass, as its constructor is called."""

    def __call__(
        self,
        port_path: str,
        device: DeviceInfo,
        sink: MeasurementSink,
        state: Any,
        /,
        *,
        baudrate: int | None = None,
        local_tz: tzinfo | None = None,
        options: dict[str, Any] | None = None,
    ) -> _SerialDriver: ...


@dataclass(frozen=True, slots=True)
class SerialSession:
    """The profile table's shape for a serial driver class: construct it for the context, run it, and
    leave the device it ended with (identified or not) in ``ctx.device``."""

    driver_class: SerialDriverClass

    async def __call__(self, ctx: SerialContext) -> SessionResult:
        driver = self.driver_class(
            ctx.port_path,
            ctx.device,
            ctx.sink,
            ctx.state,
            baudrate=ctx.baudrate,
            local_tz=ctx.local_tz,
            options=ctx.options,
        )
        # Set after construction: a config-named driver class with its own __init__ keeps working.
        driver.check_identity = ctx.check_identity
        if ctx.link_class is not None:
            driver.link_class = ctx.link_class
        try:
            if not driver.identifies_itself and ctx.announce is not None:
                await ctx.announce(driver.device)
            return await driver.run()
        finally:
            ctx.device = driver.device
