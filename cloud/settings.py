"""Cloud settings: one pydantic-settings class, read from ``RPM_*`` environment variables."""

from __future__ import annotations

import logging
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

    # Clinician API
    api_pool_max: int = Field(8, gt=0)
    """Database connections the API holds (requests run in a thread pool of about this size)."""
    api_max_body_bytes: int = Field(64 * 1024, gt=0)
    """Largest request body the API reads (413 past it, checked before the body is read)."""


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
