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
    ingest_backlog_batch_max: int = Field(500, gt=0)
    """Readings per transaction when writing backlog (large) messages: a fresh message that arrives
    meanwhile waits for at most this group."""
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

    # The patient's page (cloud/api/routes/patient_access.py): invite codes, first-time links
    invite_attempts_max: int = Field(5, gt=0)
    """Wrong invite codes a patient may enter within ``invite_attempts_window_s`` before further tries get 429."""
    invite_attempts_window_s: int = Field(15 * 60, gt=0)
    first_time_link_ttl_s: int = Field(24 * 3600, gt=0)
    """How long a first-time sign-in link can be used (once) by default."""
    first_time_token_ttl_s: int = Field(15 * 60, gt=0)
    """Lifetime of the patient token a first-time link gives: long enough to look, not a standing session."""
    first_time_key: str | None = Field(None, min_length=32)
    """HS256 key with which the API signs (and only it verifies) the short patient tokens of first-time links
    where an external issuer signs every other token; the same on every API instance. Unset: first-time
    links work only on a development API (``RPM_JWT_DEV_KEY`` and no external issuer)."""

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

    # Gateway fleet (issue 19: cloud/fleet, routes/bootstrap.py and routes/gateways.py)
    gateway_broker_url: str | None = None
    """The broker URL a provisioned gateway gets (``mqtts://broker.example.org:8883``); unset: claimed gateways
    are told to wait (202) with a problem in the log, since they could not connect anywhere."""
    gateway_broker_ca_file: Path | None = None
    """CA certificate of the broker's TLS certificate, sent to gateways as ``ca_pem`` (a private CA)."""
    gateway_credentials: Literal["password", "certificate"] = "password"
    """What a gateway gets: a per-gateway user name and password (written to ``RPM_BROKER_PASSWORD_FILE``), or a
    client certificate for its CSR signed with ``RPM_GATEWAY_CA_CERT`` / ``RPM_GATEWAY_CA_KEY``."""
    broker_password_file: Path | None = None
    """The mosquitto password file of the gateways' listener; the API rewrites it atomically (one line per gateway)."""
    broker_reload_command: str | None = None
    """Run (by the shell) after the password file changed, e.g. ``kill -HUP $(cat /run/mosquitto.pid)``."""
    broker_pid_file: Path | None = None
    """Instead of a command: SIGHUP the process whose pid this file holds."""
    gateway_ca_cert: Path | None = None
    gateway_ca_key: Path | None = None
    gateway_cert_days: int = Field(365, gt=0, le=3650)
    bootstrap_retry_after_s: float = Field(30.0, ge=1, le=3600)
    """What an unclaimed gateway is told to wait before it polls again."""
    bootstrap_clock_skew_s: float = Field(300.0, gt=0)
    bootstrap_max_body_bytes: int = Field(64 * 1024, gt=0)
    bootstrap_polls_per_s: float = Field(1.0, gt=0)
    """Polls per second one gateway (id and key) may make, after a burst of ``bootstrap_poll_burst``; then 429."""
    bootstrap_poll_burst: int = Field(10, gt=0)
    claim_failures_max: int = Field(10, gt=0)
    """Wrong claim codes one caller may enter in ``claim_failures_window_s`` before claims answer 429."""
    claim_failures_window_s: float = Field(900.0, gt=0)

    # FHIR Bulk Data export (issue 22 item 4: cloud/fhir_bulk, routes/fhir_bulk.py)
    bulk_export_dir: Path | None = None
    """Where export jobs write their NDJSON files (one folder per job; default: ``rpm-bulk-export`` in the temp dir).
    Every API process that serves the files must see the same folder."""
    bulk_export_ttl_s: int = Field(24 * 3600, gt=0)
    """How long a finished export's files can be downloaded; then they are deleted and the job answers 404."""
    bulk_export_workers: int = Field(1, ge=0, le=8)
    """Export worker threads in each API process (0: this process only takes kick-offs and serves files)."""
    bulk_export_lease_s: float = Field(60.0, gt=0)
    """A running job's worker renews its claim this often; a job whose claim lapsed is taken again."""
    bulk_export_max_attempts: int = Field(3, gt=0)
    """Claims of one job (first run plus restarts after a worker died) before it fails."""
    bulk_export_active_per_owner: int = Field(3, gt=0)
    """Exports one caller may have queued or running at once; one more kick-off answers 429."""

    # Push to an EHR (issue 22 item 3: cloud/ehr_push, ``rpm-cloud ehr-push``); off unless the URLs are set.
    # Checked as a whole by cloud.ehr_push.config when the push starts (one error naming every problem).
    ehr_push_fhir_url: str | None = None
    """The EHR's FHIR base URL; transaction Bundles are POSTed to it. https, or http on a loopback address."""
    ehr_push_token_url: str | None = None
    """The EHR's SMART Backend Services token endpoint (the client assertion's ``aud``)."""
    ehr_push_client_id: str | None = None
    """The client id the EHR registered for this deployment (``iss`` and ``sub`` of the assertion)."""
    ehr_push_key_file: Path | None = None
    """PEM private key the assertion is signed with: RSA (RS384, 2048 bits or more) or EC P-384 (ES384)."""
    ehr_push_key_id: str | None = None
    """``kid`` of that key in the JWK Set registered with the EHR."""
    ehr_push_scope: str = "system/Patient.cs system/Device.cs system/Observation.cs"
    """Scopes asked for (SMART v2: create and search, which conditional create needs)."""
    ehr_push_care_teams: str | None = None
    """Comma-separated care team ids whose EHR this is: a patient's readings are pushed while the patient's
    consent to one of them with the ``readings`` scope is in force."""
    ehr_push_batch_size: int = Field(100, gt=0, le=5000)
    """Readings one Bundle may carry."""
    ehr_push_max_entries: int = Field(500, ge=4, le=20000)
    """Bundle entries at most (a reading's Observations are never split; medplum's server takes 8)."""
    ehr_push_timeout_s: float = Field(30.0, gt=0)
    """One HTTP request to the token or FHIR endpoint (connect, read, write)."""
    ehr_push_lease_s: float = Field(300.0, gt=0)
    """How long a worker holds a batch it sends; a batch whose worker died is sent again after it."""
    ehr_push_poll_s: float = Field(5.0, gt=0)
    """How often an idle worker looks for new readings."""
    ehr_push_backoff_max_s: float = Field(300.0, gt=0)
    """Longest wait between two attempts of a batch (network errors, 429, 5xx); backoff from 1 s, jittered."""
    ehr_push_settle_s: float = Field(2.0, ge=0)
    """Readings stored less than this ago are left for the next look (besides the open-transaction horizon)."""

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
