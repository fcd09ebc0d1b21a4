"""The gateway's identity: an Ed25519 key pair made on first start, and the claim code.

Contract (issue 19): ``identity.key`` (PKCS#8 PEM, 0600) and ``claim_secret`` (16 random bytes, hex,
0600) in the data directory. The gateway id, where no TOML names one, is ``gw-`` and the first 16 hex
digits of SHA-256 over the raw 32-byte public key. The claim code is 12 Crockford base32 characters
(60 bits) of HMAC-SHA256(claim_secret, ``rpm-claim-v1``), shown as ``XXXX-XXXX-XXXX``; it is derived
from a secret that never leaves the box, so it cannot be guessed from the id, and the cloud keeps only
SHA-256 of its normalised form (upper case, no dashes, I and L read as 1, O as 0).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.provisioning.files import ProvisioningError, read_private, write_private

IDENTITY_FILE = "identity.key"
SECRET_FILE = "claim_secret"
CLAIM_LABEL = b"rpm-claim-v1"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CLAIM_CHARS = 12
SIGNATURE_HEADER = "X-RPM-Signature"


def claim_code(claim_secret: bytes) -> str:
    """``XXXX-XXXX-XXXX``: the first 60 bits of HMAC-SHA256(secret, label), five bits a character."""
    digest = hmac.new(claim_secret, CLAIM_LABEL, hashlib.sha256).digest()
    bits = int.from_bytes(digest[:8], "big") >> (64 - 5 * CLAIM_CHARS)
    chars = "".join(CROCKFORD[(bits >> (5 * (CLAIM_CHARS - 1 - i))) & 31] for i in range(CLAIM_CHARS))
    return "-".join(chars[i:i + 4] for i in range(0, CLAIM_CHARS, 4))


def normalise_claim_code(code: str) -> str:
    """What a person typed, as the cloud hashes it: upper case, no dashes or spaces, I/L → 1, O → 0."""
    cleaned = "".join(code.split()).replace("-", "").upper()
    return cleaned.translate(str.maketrans({"I": "1", "L": "1", "O": "0"}))


def claim_code_sha256(code: str) -> str:
    return hashlib.sha256(normalise_claim_code(code).encode()).hexdigest()


@dataclass(frozen=True)
class GatewayIdentity:
    private_key: Ed25519PrivateKey
    claim_secret: bytes

    @property
    def public_key_raw(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key_raw).decode()

    @property
    def gateway_id(self) -> str:
        return "gw-" + hashlib.sha256(self.public_key_raw).hexdigest()[:16]

    @property
    def claim_code(self) -> str:
        return claim_code(self.claim_secret)

    @property
    def claim_code_sha256(self) -> str:
        return claim_code_sha256(self.claim_code)

    def signature_header(self, body: bytes) -> str:
        """The ``X-RPM-Signature`` value for these exact body bytes."""
        return "ed25519=" + base64.b64encode(self.private_key.sign(body)).decode()


def identity_exists(data_dir: Path) -> bool:
    return (data_dir / IDENTITY_FILE).exists()


def load_or_create_identity(data_dir: Path) -> GatewayIdentity:
    """The identity in ``data_dir``, made (both files, 0600) on first use; :class:`ProvisioningError`
    if a file is readable by others, damaged, or one of the two is missing."""
    key_path, secret_path = data_dir / IDENTITY_FILE, data_dir / SECRET_FILE
    if not key_path.exists() and not secret_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_private(secret_path, secrets.token_bytes(16).hex().encode() + b"\n")
        write_private(key_path, pem)
    for path in (key_path, secret_path):
        if not path.exists():
            other = secret_path if path is key_path else key_path
            raise ProvisioningError(f"{path} is missing but {other} exists: restore it from a backup, or delete "
                                    f"{other} too to make a new identity (which must then be claimed again)")
    try:
        key = serialization.load_pem_private_key(read_private(key_path), password=None)
    except ValueError as err:
        raise ProvisioningError(f"{key_path} is not a PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisioningError(f"{key_path} is not an Ed25519 key")
    try:
        secret = bytes.fromhex(read_private(secret_path).decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise ProvisioningError(f"{secret_path} is not 32 hex digits") from None
    if len(secret) != 16:
        raise ProvisioningError(f"{secret_path} holds {len(secret)} bytes, not 16")
    return GatewayIdentity(key, secret)
