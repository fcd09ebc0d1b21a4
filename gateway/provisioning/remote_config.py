"""The effective configuration: defaults, then the broker credentials from provisioning, then the
cloud's remote config document, then the gateway's own TOML (and command line) — the TOML wins for
every key it sets, so an installer's override is never undone from afar; keys only the TOML may set
(:data:`gateway.config.REMOTE_ONLY_LOCAL`) are refused in a remote document.

The config topic (``rpm/v1/gw/{id}/config``, retained) carries ``{"version": int, "config": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import (
    ConfigError,
    GatewayConfig,
    local_document,
    merge_documents,
    parse_config,
    validate_remote_config,
)

RESTARTED_PARTS = {"mqtt": "uplink", "ble": "discovery", "usb": "discovery", "timezone": "discovery"}
"""Which part a changed section restarts; other sections apply in place or at the next start."""
LIVE_KEYS = ("status_interval_s", "log", "devices")
NEXT_START_KEYS = ("outbox", "metrics_port")
MAX_CONFIG_BYTES = 256 * 1024


class ConfigMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: int = Field(ge=0)
    config: dict[str, Any]


def parse_config_message(payload: bytes) -> ConfigMessage:
    """The config topic's payload; :class:`ConfigError` if it is not ``{"version", "config"}``."""
    if len(payload) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config message of {len(payload)} bytes (at most {MAX_CONFIG_BYTES})")
    try:
        return ConfigMessage.model_validate(json.loads(payload))
    except (ValueError, ValidationError, RecursionError) as err:  # RecursionError: JSON nested too deep
        detail = err.errors()[0]["msg"] if isinstance(err, ValidationError) else "not JSON"
        raise ConfigError(f"config message is not {{\"version\", \"config\"}}: {detail}") from None


def compose_config(local: GatewayConfig, *, gateway_id: str | None = None, mqtt: dict[str, Any] | None = None,
                   remote: dict[str, Any] | None = None) -> GatewayConfig:
    """The configuration to run. ``gateway_id``: the identity's, used unless the TOML names one;
    ``mqtt``: the provisioned credentials; ``remote``: the cloud's document (checked with
    :func:`~gateway.config.validate_remote_config`). Raises :class:`ConfigError` naming the key."""
    if remote is not None:
        validate_remote_config(remote)
    document: dict[str, Any] = {}
    if mqtt:
        document = merge_documents(document, {"mqtt": mqtt})
    if remote:
        document = merge_documents(document, remote)
    document = merge_documents(document, local_document(local))
    if gateway_id is not None and "gateway_id" not in local.model_fields_set:
        document["gateway_id"] = gateway_id
    if "data_dir" not in document:
        document["data_dir"] = str(local.data_dir)  # the default resolved once, not again per compose
    return parse_config(document)


def changed_sections(old: GatewayConfig, new: GatewayConfig) -> set[str]:
    """Top-level keys whose value differs."""
    before, after = old.model_dump(), new.model_dump()
    return {key for key in after if before.get(key) != after[key]}
