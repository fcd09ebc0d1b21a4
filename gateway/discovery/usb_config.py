"""The ``[usb]`` section of the gateway configuration."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class UsbDeviceMatch(BaseModel):
    """A user-supplied entry for the table of supported USB serial devices (``[[usb.devices]]``).

    A port matches by ``vid``/``pid`` (and ``description``, a case-insensitive regular expression, where
    ids are shared) or by a fixed ``port`` path.
    """

    model_config = ConfigDict(extra="forbid")
    vid: int | None = None
    pid: int | None = None
    description: str | None = None
    port: str | None = None
    """A fixed port path (e.g. a pty in tests, or /dev/ttyUSB0 for a bridge without useful ids)."""
    profile: str
    driver: str | None = None
    """``module:Class`` (a SerialDriver subclass) to run instead of the profile's driver; imported by
    ``rpm-gateway run`` at start, which refuses a config whose driver does not import."""
    baudrate: int | None = Field(None, gt=0)
    bytesize: Literal[7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    """Driver-specific settings (e.g. an A&D scale's ``zero_kg``)."""
    needs_confirmation: bool = False
    """An entry written here is the installer's decision and its port is read at once; ``true`` makes a
    port it matches a candidate that someone confirms first, as the built-in products are (issue 19)."""

    @field_validator("description")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        # Compiled here: a bad pattern would otherwise fail at every port poll.
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return value

    @field_validator("vid", "pid", mode="before")
    @classmethod
    def _hex_ids(cls, value: Any) -> Any:
        # USB ids are written in hex everywhere (lsusb, udev): accept "0fcf" as well as 0x0fcf.
        if isinstance(value, str):
            try:
                return int(value, 16)
            except ValueError:
                raise ValueError(f"not a hex USB id: {value!r}") from None
        return value


class UsbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    poll_interval_s: float = Field(2.0, gt=0)
    devices: list[UsbDeviceMatch] = Field(default_factory=list)
    ant_network_key: str | None = Field(None, pattern=r"^([0-9A-Fa-f]{2}[ :]?){7}[0-9A-Fa-f]{2}$")
    """The ANT+ network key (16 hex digits), distributed by ANT Wireless; never hard-coded."""
    retry_after_error_s: float = Field(5.0, ge=0)
    """A port whose session failed (not unplugged) is tried again after this long."""
