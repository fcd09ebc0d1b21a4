"""Where the broker is and the TLS material to reach it, as typed values (stdlib only).

Each side fills these from its own configuration (``gateway.config.MqttConfig``,
``cloud.settings.CloudSettings``), so neither imports the other's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway.errors import GatewayError

PLAIN_PORT = 1883
TLS_PORT = 8883
_PLAIN_SCHEMES = ("mqtt", "tcp")
_TLS_SCHEMES = ("mqtts", "ssl")


class MqttSetupError(GatewayError):
    """An MQTT client cannot be set up as configured (a bad broker URL, unusable TLS files)."""


class BrokerUrlError(MqttSetupError, ValueError):
    """The broker URL is not ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""


class TlsError(MqttSetupError):
    """The TLS files (CA, client certificate, key) cannot be loaded."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:pass@]host[:port]`` (default port 1883) or ``mqtts://`` (TLS, default port 8883);
        ``tcp://`` and ``ssl://`` are accepted as their synonyms. Credentials are URL-decoded."""
        parts = urlsplit(url)
        if parts.scheme not in (*_PLAIN_SCHEMES, *_TLS_SCHEMES) or not parts.hostname:
            raise BrokerUrlError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
        tls = parts.scheme in _TLS_SCHEMES
        try:
            port = parts.port
        except ValueError:
            raise BrokerUrlError(f"the port of {url!r} is not a number from 0 to 65535") from None
        return cls(
            host=parts.hostname,
            port=port or (TLS_PORT if tls else PLAIN_PORT),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS material for a broker connection. A CA file turns TLS on even on an ``mqtt://`` URL (a
    private CA in front of a broker on any port); otherwise ``mqtts://`` does, with the system's CAs."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    """Client certificate (mutual TLS); ``key_file`` may be left out when the key is in this file."""
    key_file: Path | None = None

    def wanted(self, address: BrokerAddress) -> bool:
        return address.tls or self.ca_file is not None
