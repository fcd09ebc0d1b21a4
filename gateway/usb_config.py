"""The ``[usb]`` section of the gateway configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class UsbDeviceMatch(BaseModel):
    """A user-supplied entry for the table of supported USB serial devices."""

    model_config = ConfigDict(extra="forbid")
    vid: int | None = None
    pid: int | None = None
    description: str | None = None
    port: str | None = None
    """A fixed port path (e.g. a pty in tests, or /dev/ttyUSB0 for a bridge without useful ids)."""
    profile: str
    baudrate: int | None = None


class UsbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    poll_interval_s: float = Field(2.0, gt=0)
    devices: list[UsbDeviceMatch] = Field(default_factory=list)
    ant_network_key: str | None = None
    """The ANT+ network key (16 hex digits), distributed by ANT Wireless; never hard-coded."""
