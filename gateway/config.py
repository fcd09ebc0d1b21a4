"""Gateway configuration: one TOML file, validated, with defaults that work.

Fail fast, in one line that names the key: a validation error says which key and why
(``mqtt.batch_max: Input should be greater than 0``), an unknown key suggests the one meant
(``mqtt.bach_max: unknown key (did you mean 'batch_max'?)``). :func:`load_config` checks what the file
alone can tell; :func:`gateway.runtime.check_startup` (``rpm-gateway run``) checks what only this machine
can: TLS files that exist and load, a writable data directory, backend and driver modules that import.
A config that passes both never starts a component that then fails the same way every second.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.contract import Identifier
from gateway.discovery.ble_config import BleConfig
from gateway.discovery.usb_config import UsbConfig
from gateway.errors import GatewayError
from gateway.local_page.config import LocalPageConfig
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.mqtt.broker import TlsOptions


class ConfigError(GatewayError):
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
    queued_ack_timeout_s: float = Field(600.0, gt=0)
    """A backlog batch (sent while one drains) that the broker took (PUBACK) but the cloud has not
    acked is sent again after this long, not ``ack_timeout_s``: after an outage the fleet's backlog is
    queued ahead of it, and a copy sent during the drain only adds to the queue."""
    max_in_flight: int = Field(20_000, gt=0)
    backlog_in_flight: int = Field(4, gt=0)
    """Backlog batches unacknowledged at once: the fleet's backlog waits in the gateways, so what
    every gateway measures now reaches the cloud ahead of it."""
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(120.0, gt=0)
    """Reconnect backoff: doubles from min to max, with jitter so a fleet does not reconnect in step."""
    drain_timeout_s: float = Field(5.0, ge=0)
    """On SIGTERM, how long to wait for the cloud's acks of what is in flight before exiting."""

    def tls(self) -> TlsOptions:
        return TlsOptions(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    def reconnect_backoff(self) -> ExponentialBackoff:
        # Jitter only shortens a wait (0.5..1 x): reconnect_max_s stays the longest a gateway is away.
        return ExponentialBackoff(self.reconnect_min_s, self.reconnect_max_s, jitter=(0.5, 1.0))


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_readings: int = Field(1_000_000, gt=0)
    when_full: Literal["drop_oldest", "refuse_new"] = "refuse_new"
    """``refuse_new``: a full outbox drops nothing (devices with memory keep the record, live readings
    are counted lost); ``drop_oldest`` (opt-in) deletes the oldest reading to keep the new one."""
    max_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    """Byte budget for the readings waiting in the outbox."""
    max_age_days: float | None = Field(None, gt=0)
    """Readings waiting longer than this are removed (and counted); None: kept until acked."""
    reserve_bytes: int = Field(4 * 1024 * 1024, ge=0)
    """Disk space held back (a reserve file) so acks and checkpoints still work on a full disk."""
    unwritable_grace_s: float = Field(30.0, ge=0)
    """A data directory that stays unwritable this long while running makes the gateway exit 2."""
    remember_delivered_days: float = Field(90.0, ge=0)
    """How long ids the cloud confirmed are remembered, so a device re-sending its memory costs no traffic."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: str = "INFO"
    json_format: bool = Field(False, alias="json")

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"unknown log level {value!r}{_did_you_mean(value.upper(), LOG_LEVELS)}; "
                             f"one of {', '.join(LOG_LEVELS)}")
        return value


def default_data_dir() -> Path:
    """The service's data directory, never the current one: ``RPM_GATEWAY_DATA``, else systemd's
    ``STATE_DIRECTORY`` (``StateDirectory=`` in the unit), else ``/var/lib/rpm-gateway`` for root, else
    ``$XDG_STATE_HOME/rpm-gateway`` (``~/.local/state/rpm-gateway``) for a user trying it out."""
    for name in ("RPM_GATEWAY_DATA", "STATE_DIRECTORY"):
        value = os.environ.get(name)
        if value:
            return Path(value.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/rpm-gateway")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rpm-gateway"


class ProvisioningConfig(BaseModel):
    """``[provisioning]``: how a gateway with no broker settings gets them from the cloud (issue 19)."""

    model_config = ConfigDict(extra="forbid")
    bootstrap_url: str | None = Field(default_factory=lambda: os.environ.get("RPM_GATEWAY_BOOTSTRAP_URL") or None)
    """The cloud's ``POST /bootstrap/v1/poll`` URL (``rpm-gateway run --bootstrap-url``); None: the TOML's
    ``[mqtt]`` section (or credentials stored by an earlier provisioning) is all there is."""
    ca_file: Path | None = None
    """CA for the bootstrap endpoint's HTTPS certificate (a private CA); default: the system's CAs."""
    poll_interval_cap_s: float | None = Field(None, gt=0)
    """Poll at least this often while unclaimed, whatever ``retry_after_s`` the cloud asks, and re-poll after
    refused credentials no later than this (an installer on site, tests); None: as the cloud asks."""
    request_timeout_s: float = Field(15.0, gt=0)
    config_apply_timeout_s: float = Field(30.0, gt=0)
    """A remote config whose restarted uplink is not connected within this is rolled back."""

    @field_validator("bootstrap_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"expected an https:// URL, got {value!r}")
        return value


class ConfirmedDevice(BaseModel):
    """One device a person confirmed (locally or in the workspace): its uid and, for a two-user cuff, the slot."""

    model_config = ConfigDict(extra="allow")
    uid: str = Field(min_length=1, max_length=200)
    user_index: int | None = Field(None, ge=0, le=255)

    @model_validator(mode="before")
    @classmethod
    def _from_uid(cls, value: Any) -> Any:
        return {"uid": value} if isinstance(value, str) else value


class DeviceDecisions(BaseModel):
    """``[devices]``: the confirm / ignore decisions of the remote config document (contract, issue 19)."""

    model_config = ConfigDict(extra="forbid")
    confirmed: list[ConfirmedDevice] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    unpaired: list[str] = Field(default_factory=list)
    """Devices the workspace unpaired: forgotten, whoever confirmed them."""


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    gateway_id: Identifier = Field(default_factory=lambda: f"gw-{socket.gethostname().split('.')[0]}")
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    """Outbox, device state, identity and credentials; default: the service's (see :func:`default_data_dir`)."""
    timezone: str | None = None
    """The zone device clocks show (IANA name); default: the system's."""
    status_interval_s: float = Field(60.0, gt=0)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    ble: BleConfig = Field(default_factory=BleConfig)
    usb: UsbConfig = Field(default_factory=UsbConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    # ---- issue 19 (provisioning, remote configuration)
    provisioning: ProvisioningConfig = Field(default_factory=lambda: ProvisioningConfig())
    devices: DeviceDecisions = Field(default_factory=lambda: DeviceDecisions())
    local_page: LocalPageConfig = Field(default_factory=LocalPageConfig)  # issue 19, H11: the gateway's own page

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


def _did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _key(loc: typing.Sequence[int | str]) -> str:
    """``("usb", "devices", 0, "profile")`` → ``usb.devices[0].profile``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def _model_at(loc: typing.Sequence[int | str]) -> type[BaseModel] | None:
    """The configuration model that holds the key at ``loc`` (for suggesting a known key)."""
    model: type[BaseModel] = GatewayConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        found = _model_in(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _belongs_in(name: str) -> str:
    """Where a key that is real, but not here, belongs (``data_dir`` written under ``[mqtt]``)."""
    if name in GatewayConfig.model_fields:
        return f" ({name} is a top-level key)"
    for section, field in GatewayConfig.model_fields.items():
        model = _model_in(field.annotation)
        if model is not None and any(name in (n, f.alias) for n, f in model.model_fields.items()):
            return f" ({name} belongs in [{section}])"
    return ""


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = item["loc"]
        key = _key(loc)
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and loc:
            parent = _model_at(loc[:-1])
            known = [f.alias or name for name, f in parent.model_fields.items()] if parent else []
            message = f"unknown key{_did_you_mean(str(loc[-1]), known) or _belongs_in(str(loc[-1]))}"
        parts.append(f"{key}: {message}")
    return "; ".join(parts)


def _check_devices(config: GatewayConfig) -> list[str]:
    """Device tables the file names: every profile has a driver, every USB entry can match a port."""
    from gateway.discovery.usb_devices import DRIVERS, SUPPORTED_DEVICES

    problems = []
    usb_profiles = sorted({*DRIVERS, *(d.profile for d in SUPPORTED_DEVICES)})
    for index, entry in enumerate(config.usb.devices):
        key = f"usb.devices[{index}]"
        if entry.driver is None and entry.profile not in usb_profiles:
            problems.append(f"{key}.profile: unknown profile {entry.profile!r}"
                            f"{_did_you_mean(entry.profile, usb_profiles)}; known: {', '.join(usb_profiles)}")
        if entry.port is None and entry.vid is None and entry.description is None:
            problems.append(f"{key}: matches no port (give vid, description or port)")
    if any(device.profile for device in config.ble.enrolled):
        ble_profiles = _ble_profiles()
        for index, device in enumerate(config.ble.enrolled):
            if device.profile is not None and device.profile not in ble_profiles:
                problems.append(f"ble.enrolled[{index}].profile: unknown profile {device.profile!r}"
                                f"{_did_you_mean(device.profile, ble_profiles)}; known: {', '.join(ble_profiles)}")
    return problems


def _ble_profiles() -> list[str]:
    from gateway.profiles import BLE_PROFILES  # the table imports every driver: only when a config is checked

    return sorted(BLE_PROFILES)


def parse_config(data: dict) -> GatewayConfig:
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    problems = _check_devices(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def load_config(path: str | Path | None) -> GatewayConfig:
    """Load and validate a TOML file; with no path, the defaults."""
    if path is None:
        return GatewayConfig()
    return parse_config(load_config_document(path))


def load_config_document(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, not yet validated (:func:`parse_config` does that)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return data


# ---------------------------------------------------------------------------- remote configuration (issue 19)

REMOTE_ONLY_LOCAL: tuple[tuple[str, ...], ...] = (
    ("gateway_id",), ("data_dir",), ("provisioning",), ("ble", "backend"), ("usb", "devices", "*", "driver"),
    ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"), ("local_page",),
)
"""Keys a remote config document may not set: who the gateway is, where its data lives, which cloud it
asks, and anything that names a local file or a Python module to import (a config from the network must
never make the gateway run code of its choosing or read a file of its choosing), and the local page (opted
into on site: a remote document must not open it on every interface or name a "button" file anything touches)."""


def validate_config(document: dict[str, Any]) -> GatewayConfig:
    """Validate a configuration document (the TOML's schema) and return it; :class:`ConfigError` names
    the key otherwise. The public form of what ``load_config`` does with a file."""
    return parse_config(document)


def validate_remote_config(document: Any) -> GatewayConfig:
    """Validate a config document the cloud sends (``PUT /v1/gateways/{id}/config``, the ``config`` topic,
    the bootstrap answer): the TOML's schema, less the keys in :data:`REMOTE_ONLY_LOCAL`. The cloud calls
    this before it stores a document (422 with the message), the gateway again before it applies one."""
    if not isinstance(document, dict):
        raise ConfigError(f"(top level): expected a table of settings, got {type(document).__name__}")
    problems = [f"{key}: set only in the gateway's own TOML file, not by remote configuration"
                for key in _present_keys(document, REMOTE_ONLY_LOCAL)]
    if problems:
        raise ConfigError("; ".join(problems))
    return parse_config(document)


def _present_keys(document: dict[str, Any], paths: typing.Iterable[tuple[str, ...]]) -> list[str]:
    found = []
    for path in paths:
        found += [_key(loc) for loc in _locations(document, path, ())]
    return found


def _locations(node: Any, path: tuple[str, ...], at: tuple[int | str, ...]) -> list[tuple[int | str, ...]]:
    if not path:
        return [at]
    head, rest = path[0], path[1:]
    if head == "*":
        return [loc for i, item in enumerate(node) for loc in _locations(item, rest, (*at, i))] \
            if isinstance(node, list) else []
    if isinstance(node, dict) and head in node:
        return _locations(node[head], rest, (*at, head))
    return []


def merge_documents(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, table by table (a key ``override`` sets wins; lists are replaced)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_documents(merged[key], value)
        else:
            merged[key] = value
    return merged


def local_document(config: GatewayConfig) -> dict[str, Any]:
    """The keys the gateway's own TOML (and command line) set, as a document: they win over the cloud's."""
    return config.model_dump(exclude_unset=True, by_alias=True)


def overridden_keys(remote: dict[str, Any], local: dict[str, Any], prefix: str = "") -> list[str]:
    """Leaf keys of ``remote`` that ``local`` also sets (so the local value is the one used)."""
    keys = []
    for key, value in remote.items():
        if key not in local:
            continue
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and isinstance(local[key], dict):
            keys += overridden_keys(value, local[key], name)
        else:
            keys.append(name)
    return keys
