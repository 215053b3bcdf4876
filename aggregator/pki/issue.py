"""Certificates signed by the federation CA: the broker's server certificate, client
certificates generated here (the aggregator's), and a box's certificate signed from the
CSR it made with its own key (its private key never leaves it), plus the chain check a
technician runs before installing one. Every issued certificate is recorded in
``issued.json`` so that aggregator.pki.crl can revoke all of a device's serials."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aggregator.pki.files import (
    RESERVED_IDENTITIES,
    CertificateAuthority,
    IssuedCert,
    PkiError,
    new_key,
    now_utc,
    record_issued,
    validate_identity,
    write_cert,
    write_private_key,
)
from federation.files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_SERVER_DAYS = 825
DEFAULT_DEVICE_DAYS = 90


def _leaf_builder(
    ca: CertificateAuthority,
    subject_cn: str,
    public_key: Any,
    valid_days: int,
    eku: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    now = now_utc()
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
    key = new_key()
    cert = (
        _leaf_builder(
            ca, hostnames[0], key.public_key(), valid_days, ExtendedKeyUsageOID.SERVER_AUTH
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    out = Path(out_dir)
    write_private_key(out / "server.key", key)
    write_cert(out / "server.crt", cert)
    record_issued(ca, hostnames[0], "server", cert)
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
    key = new_key()
    cert = _leaf_builder(
        ca, identity, key.public_key(), valid_days, ExtendedKeyUsageOID.CLIENT_AUTH
    ).sign(ca.private_key, hashes.SHA256())
    out = Path(out_dir)
    write_private_key(out / f"{identity}.key", key)
    write_cert(out / f"{identity}.crt", cert)
    record_issued(ca, identity, "client", cert)
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
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    write_private_key(key_path, key)
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
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
    record_issued(ca, device_id, "device", cert)
    log.info("signed device certificate for %s (serial %x)", device_id, cert.serial_number)
    return cert.public_bytes(serialization.Encoding.PEM)


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
