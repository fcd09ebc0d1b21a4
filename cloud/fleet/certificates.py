"""Client certificates for gateways: the gateway's CSR (its key never leaves it) signed with the
deployment's CA. The subject is exactly ``CN=<gateway id>`` whatever else the CSR asks for, because the
broker (``require_certificate true`` + ``use_identity_as_username true``) makes the CN the user name, hence
the client id the ACLs are written for. A CSR for another CN is refused: a gateway asks only for itself."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.fleet import FleetError


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    pem: str
    serial: str
    fingerprint: str
    not_after: datetime
    ca_pem: str


def _load_ca(cert_path: Path | None, key_path: Path | None) -> tuple[x509.Certificate, object]:
    if cert_path is None or key_path is None:
        raise FleetError(503, "certificate credentials need RPM_GATEWAY_CA_CERT and RPM_GATEWAY_CA_KEY",
                         slug="ca-not-configured")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise FleetError(503, f"the gateway CA cannot be read: {err}", slug="ca-not-configured") from None
    return cert, key


def sign_gateway_csr(csr_pem: str | None, gateway_id: str, *, ca_cert: Path | None, ca_key: Path | None,
                     days: int, now: datetime | None = None) -> IssuedCertificate:
    """A certificate for the CSR's key with subject CN=gateway id, client-auth only, ``days`` long."""
    if not csr_pem:
        raise FleetError(400, "csr: a certificate deployment needs the gateway's CSR", slug="bad-csr")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise FleetError(400, "csr: not a PEM certificate signing request", slug="bad-csr") from None
    if not csr.is_signature_valid:
        raise FleetError(400, "csr: its signature does not verify", slug="bad-csr")
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [gateway_id]:
        raise FleetError(400, f"csr: the common name must be the gateway id {gateway_id!r}, not {names}",
                         slug="bad-csr")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise FleetError(400, "csr: unsupported key type", slug="bad-csr")
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        raise FleetError(400, "csr: an RSA key needs at least 2048 bits", slug="bad-csr")
    ca, key = _load_ca(ca_cert, ca_key)
    now = now or datetime.now(UTC)
    serial = secrets.randbits(127) | 1
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
               .issuer_name(ca.subject).public_key(public).serial_number(serial)
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)  # type: ignore[arg-type]
    der = cert.public_bytes(serialization.Encoding.DER)
    return IssuedCertificate(pem=cert.public_bytes(serialization.Encoding.PEM).decode(), serial=format(serial, "x"),
                             fingerprint=hashlib.sha256(der).hexdigest(), not_after=now + timedelta(days=days),
                             ca_pem=ca.public_bytes(serialization.Encoding.PEM).decode())
