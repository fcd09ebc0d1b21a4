"""Cloud settings: one pydantic-settings class, read from ``RPM_*`` environment variables."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.mqtt.broker import TlsOptions


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RPM_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/rpm"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None

    # Logs (cloud.logging_setup)
    log_format: Literal["plain", "json"] = "plain"
    """``plain``: one line of text per event; ``json``: one JSON object per line, for a log shipper."""
    log_level: str | None = None
    """Root log level (DEBUG, INFO, WARNING, ERROR); default: the command's own (INFO, the demo WARNING)."""

    # Ingest
    ingest_batch_max: int = Field(2000, gt=0)
    ingest_batch_ms: int = Field(50, ge=0)
    ingest_queue_max: int = Field(20_000, gt=0)
    """Messages held between the MQTT callback and the writer; past it the worker stops reading."""
    late_after_s: float = Field(6 * 3600, gt=0)
    """A reading measured longer ago than this when it arrives is 'late': stored, evaluated, never paged."""
    ingest_session_expiry_s: int = Field(3600, ge=0, le=0xFFFFFFFF)
    """MQTT v5 session expiry of ingest workers: how long the broker keeps queuing for a worker that
    vanished (crash, restart, network) until the same client id comes back (0: clean sessions)."""
    ingest_lock_dir: Path | None = None
    """Where ingest instances on one host claim their instance number (default: the temp dir)."""

    # API and auth
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    jwt_dev_key: str | None = None
    """HS256 key for development tokens (``rpm-cloud token``); unset in production."""
    jwt_issuer: str = "rpm-dev"
    jwt_audience: str = "rpm-api"
    jwt_jwks_url: str | None = None
    jwt_leeway_s: int = 30

    # Storage policy (TimescaleDB)
    retention_days: int | None = None
    compress_after_days: int = 7

    # Alerts delivery
    webhook_timeout_s: float = 5.0

    # Notification channels (cloud.alerts.channels): e-mail over SMTP, the SMS/voice provider, deep links
    smtp_host: str | None = None
    """SMTP server for alert e-mail; unset: e-mail deliveries fail with reason ``config`` (visible on the alert)."""
    smtp_port: int | None = Field(None, gt=0, lt=65536)
    """Default by ``smtp_security``: 25 (none), 587 (starttls), 465 (tls)."""
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_ca_file: Path | None = None
    """CA bundle that signs the SMTP server's certificate (default: the system's); verification is always on."""
    smtp_from: str = "rpm-alerts@localhost"
    smtp_timeout_s: float = Field(10.0, gt=0)
    public_url: str = "http://127.0.0.1:8080"
    """Base of the workspace's deep links in messages (``{public_url}/ui/#/alerts/{id}?link=...``)."""
    alert_link_ttl_s: int = Field(24 * 3600, gt=0)
    """How long a message's deep link can be opened (once)."""
    provider_url: str | None = None
    """HTTP endpoint of the SMS/voice provider; unset: provider deliveries fail with reason ``config``."""
    provider_token: str | None = None
    """Sent as ``Authorization: Bearer``."""
    provider_template: str | None = None
    """JSON body with ``$to``, ``$text``, ``$kind``, ``$delivery_id`` (JSON-escaped; write ``"$text"``)."""
    provider_timeout_s: float = Field(10.0, gt=0)

    # Clinician API
    api_pool_max: int = Field(8, gt=0)
    """Database connections the API holds (requests run in a thread pool of about this size)."""
    api_max_body_bytes: int = Field(64 * 1024, gt=0)
    """Largest request body the API reads (413 past it, checked before the body is read)."""
    # Patient equipment (cloud/api/routes/equipment.py)
    gateway_online_within_s: float = Field(300.0, gt=0)
    """A gateway is online while its last message (status or readings) reached the cloud this recently and its
    last status did not say offline. Gateways send a status every 60 s by default: 300 s is five missed."""

    # Live alert stream (cloud/api/routes/stream.py, cloud/api/alert_stream.py)
    stream_keepalive_s: float = Field(15.0, gt=0)
    """Seconds between ``: keep-alive`` comments on an idle ``/v1/stream`` (proxies close silent connections)."""
    stream_max_s: float = Field(900.0, gt=0)
    """A stream ends after this long (and when its token expires); the client resumes with ``Last-Event-ID``."""

    # Workspace sign-in: OpenID Connect authorization code + PKCE from the /ui page (cloud/api/static/auth.js)
    oidc_issuer: str | None = None
    """The OpenID provider's issuer URL; unset: no sign-in link, the page asks for a pasted token (development).
    Tokens' ``iss`` must then equal it (unless ``RPM_JWT_ISSUER`` is set), and the keys come from its
    discovery document's ``jwks_uri`` when ``RPM_JWT_JWKS_URL`` is unset."""
    oidc_client_id: str = "rpm-ui"
    """The page's client id at the provider: a public client (no secret), PKCE S256, redirect URI ``<API>/ui``."""
    oidc_scopes: str = "openid profile"
    """Scopes the page asks for (space-separated); add ``offline_access`` where the provider needs it for the
    refresh token that silent renewal uses."""

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_is_an_http_url(cls, value: str | None) -> str | None:
        # The page's content policy names the issuer's origin: a value that is not one would break sign-in late.
        if value is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(f"RPM_OIDC_ISSUER must be an http(s) URL without query or fragment, not {value!r}")
        return value or None


    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if value is not None and not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
        return None if value is None else value.upper()

    def mqtt_tls(self) -> TlsOptions:
        return TlsOptions(ca_file=self.mqtt_ca_file, cert_file=self.mqtt_cert_file, key_file=self.mqtt_key_file)


@lru_cache(maxsize=1)
def get_settings() -> CloudSettings:
    return CloudSettings()
