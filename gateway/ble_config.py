"""The ``[ble]`` section of the gateway configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EnrolledBleDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str
    profile: str | None = None
    name: str | None = None


class BleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    backend: str | None = None
    """bleak backend: None picks the platform's (BlueZ on Linux); ``sim`` uses firmware_sims' backend."""
    enrolled: list[EnrolledBleDevice] = Field(default_factory=list)
    heart_rate_cadence_s: float = Field(60.0, gt=0)
