"""The ``[ble]`` section of the gateway configuration, and the bleak backends it can name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import GatewayError

BleakBackends = tuple[Any, Any]
"""(scanner backend class, client backend class) for bleak's ``backend=``; (None, None) lets bleak
pick the platform's own (BlueZ on Linux)."""


class BackendLoadError(GatewayError):
    """The configured bleak backend module cannot be imported or lacks the backend classes."""


def _simulator() -> BleakBackends:
    # Imported here, when a config names it: the simulator is not part of an installed gateway.
    from firmware_sims.ble.backend import client_backend, scanner_backend

    return scanner_backend, client_backend


NAMED_BACKENDS: dict[str, Callable[[], BleakBackends]] = {"sim": _simulator}
"""Backends a config names by a short name (``backend = "sim"``)."""


def named_backends(name: str | None) -> BleakBackends:
    """The backends for ``None`` or a name in :data:`NAMED_BACKENDS`. A module path in the config is
    imported by the runtime (``gateway.runtime.load_bleak_backends``), which hands the classes down."""
    if name is None:
        return None, None
    try:
        load = NAMED_BACKENDS[name]
    except KeyError:
        raise BackendLoadError(
            f"ble.backend: {name!r} is a module path; only rpm-gateway run, scan and pair import it"
        ) from None
    try:
        return load()
    except ImportError as err:
        raise BackendLoadError(f"ble.backend: cannot import {name!r}: {err}") from None


def normalise_address(address: str) -> str:
    """BLE addresses compare upper-case (BlueZ reports them so; configs are typed either way)."""
    return address.strip().upper()


class EnrolledBleDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str
    profile: str | None = None
    name: str | None = None

    @field_validator("address")
    @classmethod
    def _upper(cls, value: str) -> str:
        return normalise_address(value)


class BleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    backend: str | None = None
    """bleak backend: None picks the platform's (BlueZ on Linux); ``sim`` (or a module path exposing
    ``scanner_backend`` and ``client_backend``) uses that module, imported only when BLE starts."""
    adapter: str | None = Field(None, pattern=r"^hci[0-9]{1,3}$")
    """The BlueZ adapter to scan and connect on (``hci0``); None lets bleak pick the first powered one,
    which on a machine with two adapters is either, by hash order."""
    enrolled: list[EnrolledBleDevice] = Field(default_factory=list)
    heart_rate_cadence_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(15.0, gt=0)
    connect_attempts: int = Field(3, ge=1, le=20)
    """Connection attempts per session, with backoff and jitter between them."""
    op_timeout_s: float = Field(10.0, gt=0)
    """Every GATT read, write and subscription, and the wait for each next RACP record."""
    idle_timeout_s: float = Field(5.0, gt=0)
    """A cuff or scale that sent nothing for this long has sent its memory."""
    session_cooldown_s: float = Field(60.0, ge=0)
    """After a good session, leave the device alone this long even if it keeps advertising."""
    retry_backoff_s: float = Field(5.0, gt=0)
    """First wait after a failed session; doubles per failure (with jitter) up to ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = Field(300.0, gt=0)
    heart_rate_max_session_s: float | None = Field(None, gt=0)
    """End a heart-rate session after this long (None: until the strap goes away)."""
