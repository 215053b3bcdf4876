"""The federation's TLS PKI: CA, broker server certificate, device certificates, CRL.

Who runs what (see docs/operations.md):

- the operator creates the federation CA once (`create_ca`), issues the broker's server
  certificate (`issue_server_cert`) and the aggregator's client certificate
  (`issue_client_cert`), signs each box's CSR (`sign_device_csr`) and revokes boxes
  (`revoke`, which rewrites the CRL the broker reads);
- a box creates its own TLS key and CSR (`create_device_key_and_csr`): its private key
  never leaves it.

Keys are ECDSA P-256: Mosquitto 2.0.11 (OpenSSL 1.1/3), paho-mqtt (Python ssl) and the
OpenSSL builds of Raspberry Pi OS and JetPack all accept it for TLS 1.2 and 1.3 client
and server authentication. Ed25519 certificates work only with TLS 1.3 and are refused by
several embedded TLS stacks, so they are not used here.

The broker maps a client certificate's CN to its MQTT username
(`use_identity_as_username`), and the ACL grants per-device topics by that username. So
the CN is the whole identity: device ids are validated, the aggregator identity is
reserved, and each certificate is recorded (`issued.json`) so `revoke(device_id)` finds
every serial issued to that device.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.files import write_atomic

log = logging.getLogger(__name__)

# Same rule as aggregator.registry: the CN becomes an MQTT username that the ACL pastes
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

DEFAULT_CA_DAYS = 3650
DEFAULT_SERVER_DAYS = 825
DEFAULT_DEVICE_DAYS = 90
# A CRL past its nextUpdate makes OpenSSL refuse EVERY client (CRL has expired), so it is
# re-signed well before that: `renew_crl` (run weekly by fedface-crl-renew.timer).
DEFAULT_CRL_DAYS = 30


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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write by rename so a reader (Mosquitto on SIGHUP) never sees half a file; the temp
    file is created with ``mode`` so a private key is never readable, even briefly."""
    write_atomic(path, data, mode)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    out_dir: Path | str, fed_id: str, *, valid_days: int = DEFAULT_CA_DAYS
) -> CertificateAuthority:
    """Create the federation CA in ``out_dir`` (refuses to overwrite an existing one)."""
    out = Path(out_dir)
    validate_identity(fed_id, "federation id")
    if (out / CA_KEY).exists():
        raise PkiError(f"a CA already exists in {out}: load it with load_ca() instead")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"FedFace federation CA {fed_id}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedface:{fed_id}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    write_private_key(out / CA_KEY, key)
    _write_cert(out / CA_CERT, cert)
    ca = CertificateAuthority(out, fed_id, cert, key)
    _save_issued(ca, {"fed_id": fed_id, "certs": [], "revoked": []})
    # OpenSSL with CRL checking needs a CRL for the CA from the start, even an empty one.
    renew_crl(ca)
    log.info("created federation CA for %s in %s", fed_id, out)
    return ca


def load_ca(ca_dir: Path | str) -> CertificateAuthority:
    d = Path(ca_dir)
    if not (d / CA_KEY).is_file() or not (d / CA_CERT).is_file():
        raise PkiError(f"no CA in {d} (expected {CA_CERT} and {CA_KEY}): run create_ca first")
    key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{d / CA_KEY} is not an EC private key")
    cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    if cert.public_key() != key.public_key():
        raise PkiError(f"{d / CA_CERT} does not belong to {d / CA_KEY}")
    issued = json.loads((d / ISSUED_FILE).read_text()) if (d / ISSUED_FILE).exists() else {}
    return CertificateAuthority(d, str(issued.get("fed_id", "")), cert, key)


def _load_issued(ca: CertificateAuthority) -> dict[str, Any]:
    if not ca.issued_path.exists():
        return {"fed_id": ca.fed_id, "certs": [], "revoked": []}
    data: dict[str, Any] = json.loads(ca.issued_path.read_text())
    return data


def _save_issued(ca: CertificateAuthority, data: dict[str, Any]) -> None:
    atomic_write(ca.issued_path, json.dumps(data, indent=2, sort_keys=True).encode(), 0o600)


def _record(ca: CertificateAuthority, identity: str, role: str, cert: x509.Certificate) -> None:
    data = _load_issued(ca)
    data["certs"].append(
        {
            "identity": identity,
            "role": role,
            "serial": str(cert.serial_number),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    )
    _save_issued(ca, data)


def _leaf_builder(
    ca: CertificateAuthority,
    subject_cn: str,
    public_key: Any,
    valid_days: int,
    eku: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedface:{ca.fed_id}"),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(
            min(now + dt.timedelta(days=valid_days), ca.certificate.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )


def issue_server_cert(
    ca: CertificateAuthority,
    hostnames: Sequence[str],
    out_dir: Path | str,
    *,
    valid_days: int = DEFAULT_SERVER_DAYS,
) -> IssuedCert:
    """Broker certificate for the given DNS names and/or IP addresses (SANs): clients
    verify the broker's name against these, so list every name boxes connect to."""
    if not hostnames:
        raise PkiError("the broker certificate needs at least one hostname or IP address")
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$", h):
                raise PkiError(f"invalid broker hostname {h!r}") from None
            sans.append(x509.DNSName(h))
    key = _new_key()
    cert = (
        _leaf_builder(
            ca, hostnames[0], key.public_key(), valid_days, ExtendedKeyUsageOID.SERVER_AUTH
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    out = Path(out_dir)
    write_private_key(out / "server.key", key)
    _write_cert(out / "server.crt", cert)
    _record(ca, hostnames[0], "server", cert)
    log.info("issued broker certificate for %s", ", ".join(hostnames))
    return IssuedCert(out / "server.crt", out / "server.key", cert.serial_number)


def issue_client_cert(
    ca: CertificateAuthority,
    identity: str,
    out_dir: Path | str,
    *,
    valid_days: int = DEFAULT_SERVER_DAYS,
) -> IssuedCert:
    """Client certificate + key generated here, for the aggregator (or any service the
    operator runs): ``<identity>.crt`` / ``<identity>.key`` in ``out_dir``."""
    validate_identity(identity, "client identity")
    key = _new_key()
    cert = _leaf_builder(
        ca, identity, key.public_key(), valid_days, ExtendedKeyUsageOID.CLIENT_AUTH
    ).sign(ca.private_key, hashes.SHA256())
    out = Path(out_dir)
    write_private_key(out / f"{identity}.key", key)
    _write_cert(out / f"{identity}.crt", cert)
    _record(ca, identity, "client", cert)
    log.info("issued client certificate for %s", identity)
    return IssuedCert(out / f"{identity}.crt", out / f"{identity}.key", cert.serial_number)


def create_device_key_and_csr(device_id: str, out_dir: Path | str) -> tuple[Path, Path]:
    """On the box: a new TLS key (``device-tls.key``, 0600) and a CSR to hand to the
    operator. Refuses to replace an existing key (that would orphan its certificate)."""
    validate_identity(device_id)
    out = Path(out_dir)
    key_path, csr_path = out / "device-tls.key", out / "device-tls.csr"
    if key_path.exists():
        raise PkiError(f"{key_path} already exists: remove it first to re-key this box")
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    write_private_key(key_path, key)
    atomic_write(csr_path, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, csr_path


def sign_device_csr(
    ca: CertificateAuthority,
    csr_pem: bytes,
    device_id: str,
    *,
    valid_days: int = DEFAULT_DEVICE_DAYS,
) -> bytes:
    """Sign a box's CSR: CN = device id (the broker username), clientAuth only, short
    validity. Returns the certificate PEM."""
    validate_identity(device_id)
    if device_id in RESERVED_IDENTITIES:
        raise PkiError(f"device id {device_id!r} is reserved; choose another device id")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise PkiError(f"not a PEM certificate signing request: {e}") from None
    if not csr.is_signature_valid:
        raise PkiError("the CSR signature is invalid (corrupted or tampered CSR)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and cns[0].value != device_id:
        raise PkiError(
            f"the CSR is for {cns[0].value!r}, not {device_id!r}: check which box it came from"
        )
    pub = csr.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 2048:
        raise PkiError("RSA keys under 2048 bits are refused")
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise PkiError(f"unsupported CSR key type {type(pub).__name__}")
    cert = _leaf_builder(ca, device_id, pub, valid_days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(
        ca.private_key, hashes.SHA256()
    )
    _record(ca, device_id, "device", cert)
    log.info("signed device certificate for %s (serial %x)", device_id, cert.serial_number)
    return cert.public_bytes(serialization.Encoding.PEM)


def revoke(ca: CertificateAuthority, device_id: str, *, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """Revoke every certificate issued to ``device_id`` and rewrite the CRL. The broker
    applies it on its next SIGHUP (``systemctl reload mosquitto``) or restart."""
    data = _load_issued(ca)
    serials = [c["serial"] for c in data["certs"] if c["identity"] == device_id]
    if not serials:
        raise PkiError(f"no certificate was issued to {device_id!r} by this CA")
    already = {r["serial"] for r in data["revoked"]}
    now = _now().isoformat()
    for s in serials:
        if s not in already:
            data["revoked"].append({"serial": s, "identity": device_id, "revoked_at": now})
    _save_issued(ca, data)
    log.info("revoked %d certificate(s) of %s", len(serials), device_id)
    return renew_crl(ca, crl_days=crl_days)


def revoked_serials(ca: CertificateAuthority) -> list[int]:
    return [int(r["serial"]) for r in _load_issued(ca)["revoked"]]


def renew_crl(ca: CertificateAuthority, *, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """(Re)sign the CRL with every revoked serial and a fresh nextUpdate."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=crl_days))
    )
    for r in _load_issued(ca)["revoked"]:
        revoked_at = dt.datetime.fromisoformat(r["revoked_at"])
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(r["serial"]))
            .revocation_date(revoked_at)
            .build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    atomic_write(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca.crl_path


def verify_chain(ca_cert_pem: bytes, cert_pem: bytes) -> x509.Certificate:
    """Check that ``cert_pem`` was signed by the CA (a technician's sanity check before
    installing a certificate on a box)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise PkiError(f"certificate was not issued by this CA: {e}") from None
    return cert


def crl_days_left(ca: CertificateAuthority) -> float:
    """Days until the CRL's nextUpdate (negative: expired, every client is refused)."""
    if not ca.crl_path.exists():
        raise PkiError(f"{ca.crl_path} missing: run renew_crl (crl-renew) to create it")
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    next_update = crl.next_update_utc
    if next_update is None:
        return float("inf")
    return (next_update - _now()).total_seconds() / 86400
