"""Signed bootstrap polls as a gateway makes them, for the cloud's tests: the body is built by the gateway's
own :class:`~gateway.provisioning.bootstrap.BootstrapClient` (so the cloud is tested against what real
gateways send), and can then be altered byte by byte to play an attacker."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.provisioning.bootstrap import BootstrapClient
from gateway.provisioning.identity import GatewayIdentity

POLL = "/bootstrap/v1/poll"


@dataclass
class FakeGateway:
    identity: GatewayIdentity
    gateway_id: str
    client: BootstrapClient

    @classmethod
    def make(cls, tmp: Path, gateway_id: str | None = None, key: Ed25519PrivateKey | None = None) -> FakeGateway:
        identity = GatewayIdentity(key or Ed25519PrivateKey.generate(), secrets.token_bytes(16))
        gateway_id = gateway_id or identity.gateway_id
        tmp.mkdir(parents=True, exist_ok=True)
        client = BootstrapClient("http://unused" + POLL, identity, gateway_id,
                                 client_key_path=tmp / f"{secrets.token_hex(4)}-client.key")
        return cls(identity, gateway_id, client)

    def body(self, **changes: Any) -> bytes:
        document = json.loads(self.client.body(None))
        document.update(changes)
        return json.dumps(document, separators=(",", ":")).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-RPM-Signature": self.identity.signature_header(body)}

    def poll(self, client: Any, **changes: Any) -> Any:
        body = self.body(**changes)
        return client.post(POLL, content=body, headers=self.headers(body))
