"""The federation's TLS PKI: CA, broker server certificate, device certificates, CRL.

This module creates and loads the federation CA (and re-exports the names most callers
use as ``pki.<name>``); certificates are issued by aggregator.pki.issue, revoked (CRL) by
aggregator.pki.crl, and the CA directory's files and identity rules are
aggregator.pki.files, so that each stays small and none imports the others' callers.

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
import json
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aggregator.pki.crl import renew_crl, revoke
from aggregator.pki.files import (
    AGGREGATOR_IDENTITY,
    CA_CERT,
    CA_KEY,
    ISSUED_FILE,
    CertificateAuthority,
    PkiError,
    new_key,
    now_utc,
    save_issued,
    validate_identity,
    write_cert,
    write_private_key,
)
from aggregator.pki.issue import create_device_key_and_csr, sign_device_csr
from federation.files import PRIVATE_DIR, make_dirs

# Re-exported: used by many callers as ``pki.<name>``. The rest lives in aggregator.pki.files
# (CA files, identities), aggregator.pki.issue (certificates), aggregator.pki.crl (CRL).
__all__ = [
    "AGGREGATOR_IDENTITY",
    "DEFAULT_CA_DAYS",
    "CertificateAuthority",
    "PkiError",
    "create_ca",
    "create_device_key_and_csr",
    "load_ca",
    "revoke",
    "sign_device_csr",
]

log = logging.getLogger(__name__)

DEFAULT_CA_DAYS = 3650


def create_ca(
    out_dir: Path | str, fed_id: str, *, valid_days: int = DEFAULT_CA_DAYS
) -> CertificateAuthority:
    """Create the federation CA in ``out_dir`` (refuses to overwrite an existing one)."""
    out = Path(out_dir)
    validate_identity(fed_id, "federation id")
    if (out / CA_KEY).exists():
        raise PkiError(f"a CA already exists in {out}: load it with load_ca() instead")
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"FedFace federation CA {fed_id}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedface:{fed_id}"),
        ]
    )
    now = now_utc()
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
    make_dirs(out, PRIVATE_DIR)
    os.chmod(out, 0o700)  # also an existing one: the CA key goes in
    write_private_key(out / CA_KEY, key)
    write_cert(out / CA_CERT, cert)
    ca = CertificateAuthority(out, fed_id, cert, key)
    save_issued(ca, {"fed_id": fed_id, "certs": [], "revoked": []})
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
