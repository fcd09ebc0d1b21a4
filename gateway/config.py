"""Gateway configuration: one TOML file, validated, with defaults that work.

A validation error names the key (``mqtt.batch_max: Input should be greater than 0``).
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.ble_config import BleConfig
from gateway.contract import Identifier
from gateway.usb_config import UsbConfig


class ConfigError(Exception):
    """The configuration file is missing, not TOML, or fails validation; the message names the key."""


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    batch_max: int = Field(500, gt=0, le=5000)
    batch_ms: int = Field(200, ge=0, le=60_000)
    ack_timeout_s: float = Field(30.0, gt=0)
    """A batch not acked within this is sent again (ids are deterministic; the cloud is idempotent)."""
    max_in_flight: int = Field(20_000, gt=0)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(120.0, gt=0)
    """Reconnect backoff: doubles from min to max, with jitter so a fleet does not reconnect in step."""
    drain_timeout_s: float = Field(5.0, ge=0)
    """On SIGTERM, how long to wait for the cloud's acks of what is in flight before exiting."""


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_readings: int = Field(1_000_000, gt=0)
    when_full: Literal["drop_oldest", "refuse_new"] = "drop_oldest"
    remember_delivered_days: float = Field(90.0, ge=0)
    """How long ids the cloud confirmed are remembered, so a device re-sending its memory costs no traffic."""


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: str = "INFO"
    json_format: bool = Field(False, alias="json")


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    gateway_id: Identifier = Field(default_factory=lambda: f"gw-{socket.gethostname().split('.')[0]}")
    data_dir: Path = Path(os.environ.get("RPM_GATEWAY_DATA", "./gateway-data"))
    timezone: str | None = None
    """The zone device clocks show (IANA name); default: the system's."""
    status_interval_s: float = Field(60.0, gt=0)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    ble: BleConfig = Field(default_factory=BleConfig)
    usb: UsbConfig = Field(default_factory=UsbConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def tzinfo(self) -> ZoneInfo | None:
        return ZoneInfo(self.timezone) if self.timezone else None


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{key}: {item['msg']}")
    return "; ".join(parts)


def parse_config(data: dict) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path | None) -> GatewayConfig:
    """Load and validate a TOML file; with no path, the defaults."""
    if path is None:
        return GatewayConfig()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data)
