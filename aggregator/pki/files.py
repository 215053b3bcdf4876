"""The federation CA's directory and the rules every certificate follows: the identity
rule (a certificate's CN is an MQTT username), the CA's files (``ca.crt``, ``ca.key``,
``crl.pem``, ``issued.json``), private writes of keys, and the record of every
certificate issued. Shared by aggregator.pki.authority (CA creation), aggregator.pki.issue
(certificates) and aggregator.pki.crl (revocation), which import it and never each other
(aggregator.pki.authority imports aggregator.pki.crl to write a new CA's first CRL)."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.files import write_atomic

# Same rule as aggregator.state.registry: the CN becomes an MQTT username that the ACL pastes
# into topics (%u), so '/', '+', '#' and spaces must never appear in it.
IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
AGGREGATOR_IDENTITY = "aggregator"
# Identities a device may never get: they would collide with the aggregator's ACL
# section or with the broker's own names.
RESERVED_IDENTITIES = frozenset({AGGREGATOR_IDENTITY, "broker", "server", "mosquitto", "ca"})

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"
ISSUED_FILE = "issued.json"


class PkiError(ValueError):
    """A PKI operation was refused; the message says what and how to fix it."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A federation CA on disk: ``ca.crt``, ``ca.key`` (0600), ``crl.pem``, ``issued.json``."""

    directory: Path
    fed_id: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def issued_path(self) -> Path:
        return self.directory / ISSUED_FILE


@dataclass(frozen=True)
class IssuedCert:
    """A certificate (and, when this side generated it, its private key) on disk."""

    cert_path: Path
    key_path: Path | None
    serial: int


def validate_identity(identity: str, what: str = "device id") -> str:
    if not IDENTITY_RE.match(identity):
        raise PkiError(
            f"invalid {what} {identity!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return identity


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def load_issued(ca: CertificateAuthority) -> dict[str, Any]:
    if not ca.issued_path.exists():
        return {"fed_id": ca.fed_id, "certs": [], "revoked": []}
    data: dict[str, Any] = json.loads(ca.issued_path.read_text())
    return data


def save_issued(ca: CertificateAuthority, data: dict[str, Any]) -> None:
    write_atomic(ca.issued_path, json.dumps(data, indent=2, sort_keys=True).encode(), mode=0o600)


def record_issued(
    ca: CertificateAuthority, identity: str, role: str, cert: x509.Certificate
) -> None:
    data = load_issued(ca)
    data["certs"].append(
        {
            "identity": identity,
            "role": role,
            "serial": str(cert.serial_number),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    )
    save_issued(ca, data)
