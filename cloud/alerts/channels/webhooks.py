"""Webhooks signed per Standard Webhooks 1.0 (https://www.standardwebhooks.com).

Each POST carries ``webhook-id`` (the same on every retry of one delivery, so a receiver can drop a
duplicate), ``webhook-timestamp`` (Unix seconds of this attempt; receivers refuse ones more than a few
minutes off) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

Keys: a secret of the form ``whsec_<base64>`` is the base64-decoded bytes (as the reference
implementations read it); any other secret (webhooks registered before this release) is used as its
raw UTF-8 bytes, which the reference libraries accept when given those bytes.

For one release the bespoke ``X-RPM-Signature: sha256=<hex HMAC-SHA256 of the body>`` (keyed with the
secret's UTF-8 bytes, prefix and all, exactly as before) is sent too, so receivers can move to the
standard headers before it goes. The body is unchanged: the contract ``Alert`` JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

import httpx

from cloud.alerts.channels.errors import ChannelError

SECRET_PREFIX = "whsec_"
LEGACY_SIGNATURE_HEADER = "X-RPM-Signature"


def new_secret(n_bytes: int = 32) -> str:
    """A secret in the standard's form (the spec asks for 24 to 64 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def signing_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
        except (binascii.Error, ValueError) as err:
            raise ChannelError("config", f"the webhook secret is not whsec_<base64>: {err}", permanent=True) from err
    else:
        key = secret.encode()
    if not key:
        raise ChannelError("config", "the webhook secret is empty", permanent=True)
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


def legacy_sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy_verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver of the old header does: constant-time comparison."""
    return hmac.compare_digest(legacy_sign(secret, body), signature)


def message_id(delivery_id: int) -> str:
    return f"msg_rpm_{delivery_id}"


def headers(secret: str, body: bytes, *, delivery_id: int, alert_status: str, timestamp: int | None = None
            ) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    msg_id = message_id(delivery_id)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        LEGACY_SIGNATURE_HEADER: legacy_sign(secret, body),
        "X-RPM-Delivery": str(delivery_id),
        "X-RPM-Alert-Status": alert_status,
    }


def post(http: httpx.Client, url: str, secret: str, body: bytes, *, delivery_id: int, alert_status: str) -> None:
    """One attempt; a :class:`ChannelError` unless the endpoint answered 2xx."""
    try:
        response = http.post(url, content=body, headers=headers(secret, body, delivery_id=delivery_id,
                                                                alert_status=alert_status))
    except httpx.TimeoutException as err:
        raise ChannelError("timeout", f"{type(err).__name__}: {err}") from err
    except httpx.HTTPError as err:
        raise ChannelError("refused", f"{type(err).__name__}: {err}") from err
    if not 200 <= response.status_code < 300:
        # 410 Gone is the standard's "stop sending to this endpoint".
        raise ChannelError("http", f"HTTP {response.status_code}", permanent=response.status_code == 410)
