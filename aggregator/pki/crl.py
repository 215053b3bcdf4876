"""Revocation: the list of revoked serials kept in ``issued.json`` and the CRL the broker
reads (``crl.pem``), re-signed before its nextUpdate, because an expired CRL makes
OpenSSL refuse every client."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from aggregator.pki.files import (
    CertificateAuthority,
    PkiError,
    load_issued,
    now_utc,
    save_issued,
)
from federation.files import write_atomic

log = logging.getLogger(__name__)

# A CRL past its nextUpdate makes OpenSSL refuse EVERY client (CRL has expired), so it is
# re-signed well before that: `renew_crl` (run weekly by fedface-crl-renew.timer).
DEFAULT_CRL_DAYS = 30


def revoke(ca: CertificateAuthority, device_id: str, *, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """Revoke every certificate issued to ``device_id`` and rewrite the CRL. The broker
    applies it on its next SIGHUP (``systemctl reload mosquitto``) or restart."""
    data = load_issued(ca)
    serials = [c["serial"] for c in data["certs"] if c["identity"] == device_id]
    if not serials:
        raise PkiError(f"no certificate was issued to {device_id!r} by this CA")
    already = {r["serial"] for r in data["revoked"]}
    now = now_utc().isoformat()
    for s in serials:
        if s not in already:
            data["revoked"].append({"serial": s, "identity": device_id, "revoked_at": now})
    save_issued(ca, data)
    log.info("revoked %d certificate(s) of %s", len(serials), device_id)
    return renew_crl(ca, crl_days=crl_days)


def revoked_serials(ca: CertificateAuthority) -> list[int]:
    return [int(r["serial"]) for r in load_issued(ca)["revoked"]]


def renew_crl(ca: CertificateAuthority, *, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """(Re)sign the CRL with every revoked serial and a fresh nextUpdate."""
    now = now_utc()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=crl_days))
    )
    for r in load_issued(ca)["revoked"]:
        revoked_at = dt.datetime.fromisoformat(r["revoked_at"])
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(r["serial"]))
            .revocation_date(revoked_at)
            .build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    write_atomic(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return ca.crl_path


def crl_days_left(ca: CertificateAuthority) -> float:
    """Days until the CRL's nextUpdate (negative: expired, every client is refused)."""
    if not ca.crl_path.exists():
        raise PkiError(f"{ca.crl_path} missing: run renew_crl (crl-renew) to create it")
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    next_update = crl.next_update_utc
    if next_update is None:
        return float("inf")
    return (next_update - now_utc()).total_seconds() / 86400
