"""Remote config documents per gateway: every version kept, validated with the gateway's own
:func:`gateway.config.validate_remote_config` before it is stored, published retained (QoS 1) on
``rpm/v1/gw/{id}/config`` as ``{"version", "config"}`` after the commit, and sent in the bootstrap answer.
The gateway's status says which version runs and which one it refused or rolled back.

The workspace's device decisions (confirm, ignore, unpair a candidate) are edits of the document's
``devices`` section (``{"confirmed": [{"uid", "user_index"?}], "ignored": [uid], "unpaired": [uid]}``),
each a new version like any other change.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cloud.fleet import FleetError
from cloud.settings import CloudSettings
from gateway.config import ConfigError, validate_remote_config
from gateway.contract import config_topic

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    gateway_id: str
    version: int
    document: dict[str, Any]
    set_by: str
    set_at: datetime
    reason: str | None
    published_at: datetime | None


def validate_document(document: Any) -> dict[str, Any]:
    """The document if the gateway would accept it; :class:`FleetError` 422 naming the key otherwise."""
    try:
        validate_remote_config(document)
    except ConfigError as err:
        raise FleetError(422, f"config: {err}", slug="invalid-config") from None
    if len(json.dumps(document)) > 200_000:
        raise FleetError(422, "config: larger than 200 000 bytes", slug="invalid-config")
    return document


def latest(conn: psycopg.Connection, gateway_id: str) -> ConfigVersion | None:
    row = conn.execute("SELECT gateway_id, version, document, set_by, set_at, reason, published_at FROM gateway_configs"
                       " WHERE gateway_id = %s ORDER BY version DESC LIMIT 1", (gateway_id,)).fetchone()
    return ConfigVersion(*row) if row else None


def store_version(conn: psycopg.Connection, gateway_id: str, document: dict[str, Any], actor: str,
                  reason: str | None) -> ConfigVersion:
    """Validate and store ``document`` as the next version (inside the caller's transaction, gateway locked)."""
    validate_document(document)
    row = conn.execute(
        "INSERT INTO gateway_configs (gateway_id, version, document, set_by, reason)"
        " SELECT %s, coalesce(max(version), 0) + 1, %s, %s, %s FROM gateway_configs WHERE gateway_id = %s"
        " RETURNING gateway_id, version, document, set_by, set_at, reason, published_at",
        (gateway_id, Jsonb(document), actor, reason, gateway_id)).fetchone()
    assert row is not None
    return ConfigVersion(*row)


def _same_uid(a: str, b: str) -> bool:
    # BLE addresses are case-insensitive (the gateway upper-cases them); USB serials are not.
    return a.casefold() == b.casefold() if a.startswith("ble:") and b.startswith("ble:") else a == b


def decide_device(document: dict[str, Any], uid: str, decision: str, user_index: int | None = None) -> dict[str, Any]:
    """A copy of ``document`` with the ``devices`` section saying ``decision`` (confirm, ignore, unpair) for ``uid``."""
    new = copy.deepcopy(document)
    devices = new.setdefault("devices", {})
    if not isinstance(devices, dict):
        raise FleetError(422, "config: devices: expected a table", slug="invalid-config")
    confirmed = [c for c in devices.get("confirmed", []) if not _same_uid(
        c.get("uid", "") if isinstance(c, dict) else str(c), uid)]
    ignored = [u for u in devices.get("ignored", []) if not _same_uid(str(u), uid)]
    unpaired = [u for u in devices.get("unpaired", []) if not _same_uid(str(u), uid)]
    if decision == "confirm":
        confirmed.append({"uid": uid} if user_index is None else {"uid": uid, "user_index": user_index})
    elif decision == "ignore":
        ignored.append(uid)
    elif decision == "unpair":
        unpaired.append(uid)
    else:
        raise ValueError(decision)
    devices.update(confirmed=confirmed, ignored=ignored, unpaired=unpaired)
    return new


class ConfigPublisher:
    """The API's MQTT client for config documents (user ``api`` on the services listener: ``topic write
    rpm/v1/gw/+/config``). Connected on first use, reconnects by itself; a publish not acknowledged within
    :data:`PUBLISH_TIMEOUT_S` is reported as not published (the gateway still gets the document in its
    next bootstrap answer, and the next change publishes the newest version)."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        from gateway.mqtt.broker import BrokerAddress
        from gateway.mqtt.client import MQTT_V311, ClientOptions, connect_async, create_client

        with self._lock:
            if self._client is None:
                address = BrokerAddress.parse(self.settings.mqtt_url)
                options = ClientOptions(client_id=f"rpm-api-config-{uuid.uuid4().hex[:12]}", protocol=MQTT_V311,
                                        username=self.settings.mqtt_username, password=self.settings.mqtt_password,
                                        tls=self.settings.mqtt_tls())
                client = create_client(address, options)
                connected = threading.Event()
                client.on_connect = lambda *_: connected.set()
                connect_async(client, address, options)
                client.loop_start()
                connected.wait(PUBLISH_TIMEOUT_S)
                self._client = client
            return self._client

    def publish(self, gateway_id: str, version: int, document: dict[str, Any]) -> bool:
        payload = json.dumps({"version": version, "config": document}, separators=(",", ":")).encode()
        try:
            info = self._connected().publish(config_topic(gateway_id), payload, qos=1, retain=True)
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            return bool(info.is_published())
        except (RuntimeError, ValueError, OSError) as err:
            log.warning("config version %d for %s not published: %s", version, gateway_id, err)
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.loop_stop()
                self._client.disconnect()
                self._client = None


def mark_published(conn: psycopg.Connection, gateway_id: str, version: int) -> None:
    conn.execute("UPDATE gateway_configs SET published_at = now() WHERE gateway_id = %s AND version = %s",
                 (gateway_id, version))
