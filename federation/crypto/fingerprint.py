"""Fingerprints an operator and a technician compare out of band (read over the phone,
off the box's screen) before the operator signs a box's enrolment request.

Both sides print them with these functions, so the same key always reads the same:
``fedface-edge provision`` when it writes the request, ``fedface-aggregator devices add``
when it registers it. SHA-256 of the key itself, not of a file: the TLS key's
fingerprint is the same in the box's CSR and in the certificate the operator issues.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def fingerprint(data: bytes) -> str:
    """SHA-256 as 16 groups of 4 hex digits: easy to read aloud and to compare."""
    digest = hashlib.sha256(data).hexdigest()
    return " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def signing_key_fingerprint(raw_public_key: bytes) -> str:
    """Of the raw 32-byte Ed25519 public key (the request's ``signing_key``)."""
    return fingerprint(raw_public_key)


def tls_key_fingerprint(pem: bytes) -> str:
    """Of the DER SubjectPublicKeyInfo in a CSR or a certificate (PEM)."""
    loaded: x509.CertificateSigningRequest | x509.Certificate
    if b"CERTIFICATE REQUEST" in pem:
        loaded = x509.load_pem_x509_csr(pem)
    else:
        loaded = x509.load_pem_x509_certificate(pem)
    return fingerprint(loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def request_fingerprint_lines(csr_pem: bytes, raw_signing_key: bytes) -> list[str]:
    """The lines both sides print for one enrolment request (same labels, same order)."""
    lines = [f"signing key (Ed25519) SHA-256: {signing_key_fingerprint(raw_signing_key)}"]
    if csr_pem:
        lines.append(f"TLS key (CSR/certificate) SHA-256: {tls_key_fingerprint(csr_pem)}")
    return lines
