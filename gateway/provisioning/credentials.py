"""What the cloud sent, kept in the data directory (all 0600): ``credentials.json`` (broker URL and
username/password, or the names of the client certificate files), ``mqtt-client.crt`` / ``mqtt-ca.crt``
for a certificate deployment (the key, ``mqtt-client.key``, was made here for the CSR and never left),
and ``remote_config.json`` (the running remote config document and the last one refused, so a
retained document that was rolled back is not tried again after every reconnect or restart)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.contract import now_utc
from gateway.provisioning.files import ProvisioningError, read_private, write_private

CREDENTIALS_FILE = "credentials.json"
REMOTE_CONFIG_FILE = "remote_config.json"
CLIENT_KEY_FILE = "mqtt-client.key"
CLIENT_CERT_FILE = "mqtt-client.crt"
CLIENT_CA_FILE = "mqtt-ca.crt"


class MqttCredentials(BaseModel):
    """The bootstrap answer's ``mqtt``: a URL with a username and password, or a client certificate."""

    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=2000)
    username: str | None = None
    password: str | None = None
    client_cert_pem: str | None = None
    ca_pem: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MqttCredentials:
        if self.client_cert_pem is None and self.password is None:
            raise ValueError("neither a password nor a client certificate")
        return self


class Credentials(BaseModel):
    model_config = ConfigDict(extra="ignore")
    gateway_id: str
    patient_id: str | None = None
    mqtt: MqttCredentials
    received_at: datetime = Field(default_factory=now_utc)


class StoredConfig(BaseModel):
    version: int
    config: dict[str, Any]


class StoredRejection(BaseModel):
    version: int
    reason: str


class RemoteConfigState(BaseModel):
    running: StoredConfig | None = None
    rejected: StoredRejection | None = None


class CredentialStore:
    """The provisioning files of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def client_key_path(self) -> Path:
        return self.data_dir / CLIENT_KEY_FILE

    def load(self) -> Credentials | None:
        path = self.data_dir / CREDENTIALS_FILE
        if not path.exists():
            return None
        try:
            return Credentials.model_validate_json(read_private(path))
        except ValidationError as err:
            raise ProvisioningError(f"{path} is damaged ({err.errors()[0]['msg']}): delete it and the gateway "
                                    "asks the cloud again (rotate its credentials there first)") from None

    def save(self, credentials: Credentials) -> None:
        if credentials.mqtt.client_cert_pem is not None:
            write_private(self.data_dir / CLIENT_CERT_FILE, credentials.mqtt.client_cert_pem.encode())
            if credentials.mqtt.ca_pem is not None:
                write_private(self.data_dir / CLIENT_CA_FILE, credentials.mqtt.ca_pem.encode())
        write_private(self.data_dir / CREDENTIALS_FILE, credentials.model_dump_json(indent=1).encode())

    def mqtt_document(self, credentials: Credentials) -> dict[str, Any]:
        """The ``[mqtt]`` keys these credentials give (the TOML's keys and the remote config's win)."""
        mqtt = credentials.mqtt
        if mqtt.client_cert_pem is not None:
            section: dict[str, Any] = {"url": mqtt.url, "cert_file": str(self.data_dir / CLIENT_CERT_FILE),
                                       "key_file": str(self.client_key_path)}
            if mqtt.ca_pem is not None:
                section["ca_file"] = str(self.data_dir / CLIENT_CA_FILE)
            return section
        return {"url": mqtt.url, "username": mqtt.username or credentials.gateway_id, "password": mqtt.password}

    def load_remote_config(self) -> RemoteConfigState:
        path = self.data_dir / REMOTE_CONFIG_FILE
        if not path.exists():
            return RemoteConfigState()
        try:
            return RemoteConfigState.model_validate(json.loads(read_private(path)))
        except (ValueError, ValidationError):
            # The cloud sends it again (retained topic, bootstrap): losing it costs a re-apply, not a start.
            return RemoteConfigState()

    def save_remote_config(self, state: RemoteConfigState) -> None:
        write_private(self.data_dir / REMOTE_CONFIG_FILE, state.model_dump_json(indent=1).encode())
