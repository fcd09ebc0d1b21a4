"""The ``[local_page]`` section of the gateway configuration: the page for the patient or installer."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LocalPageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    """Off by default: a page on the home network is opted into by whoever installs the gateway."""
    bind: str = "lan"
    """``lan``: the gateway's own private address on the home network (the interface of its default
    route; 127.0.0.1 when that address is not a private one, so a gateway wired straight to the internet
    never serves the page there); or an IP address to bind (``0.0.0.0`` only when written here)."""
    port: int = Field(8080, ge=1, le=65535)
    button_file: Path | None = None
    """A file a button (GPIO daemon, ``touch``) creates or touches: a page visit within
    ``button_window_s`` of the press is let in without the claim code, once per press."""
    button_window_s: float = Field(120.0, gt=0, le=3600)
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    """How long a sign-in lasts without use."""
    pairing_window_s: float = Field(120.0, gt=0, le=3600)
    """How long the page's "Look for new devices" button listens."""

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        if value != "lan":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"not an IP address or 'lan': {value!r}") from None
        return value
