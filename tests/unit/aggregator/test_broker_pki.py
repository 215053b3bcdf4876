"""The federation PKI: what each certificate says, file modes, refusals, the CLI."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aggregator.pki import authority as pki
from aggregator.pki import crl as pki_crl
from aggregator.pki import issue as pki_issue

REPO = Path(__file__).resolve().parents[3]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.create_ca(tmp_path / "ca", "fed1")


def device_cert(ca: pki.CertificateAuthority, tmp_path: Path, dev: str, days: int = 7) -> bytes:
    _, csr = pki.create_device_key_and_csr(dev, tmp_path / dev)
    return pki.sign_device_csr(ca, csr.read_bytes(), dev, valid_days=days)


def test_ca_files_and_modes(ca: pki.CertificateAuthority) -> None:
    assert mode(ca.key_path) == 0o600
    assert mode(ca.directory) == 0o700
    assert mode(ca.cert_path) == 0o644
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert pki_crl.crl_days_left(ca) == pytest.approx(pki_crl.DEFAULT_CRL_DAYS, abs=0.01)
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.create_ca(ca.directory, "fed1")
    assert pki.load_ca(ca.directory).certificate == cert


def test_device_certificate_is_short_lived_client_only(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    pem = device_cert(ca, tmp_path, "box-7", days=7)
    assert mode(tmp_path / "box-7" / "device-tls.key") == 0o600
    cert = pki_issue.verify_chain(ca.cert_path.read_bytes(), pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "box-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=7) <= life <= dt.timedelta(days=7, minutes=10)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_certificate_names(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    issued = pki_issue.issue_server_cert(ca, ["broker.example", "10.0.0.5"], tmp_path / "srv")
    assert issued.key_path is not None and mode(issued.key_path) == 0o600
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("bad", ["a/b", "box+", "#", "", "x" * 65, " box"])
def test_device_ids_that_would_escape_the_acl_are_refused(
    ca: pki.CertificateAuthority, tmp_path: Path, bad: str
) -> None:
    _, csr = pki.create_device_key_and_csr("box-1", tmp_path / "b1")
    with pytest.raises(pki.PkiError, match="invalid device id"):
        pki.sign_device_csr(ca, csr.read_bytes(), bad)


def test_reserved_and_mismatched_identities_are_refused(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    # A box asking to become the aggregator (its ACL section) is refused...
    with pytest.raises(pki.PkiError, match="reserved"):
        pki.sign_device_csr(ca, csr, "aggregator")
    # ...and so is signing a CSR under another name than the one it asks for.
    with pytest.raises(pki.PkiError, match="not 'box-2'"):
        pki.sign_device_csr(ca, csr, "box-2")
    with pytest.raises(pki.PkiError, match="not a PEM"):
        pki.sign_device_csr(ca, b"garbage", "box-2")


def test_revocation_lists_every_serial_of_the_device(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    first = x509.load_pem_x509_certificate(device_cert(ca, tmp_path, "box-1"))
    other = x509.load_pem_x509_certificate(device_cert(ca, tmp_path, "box-2"))
    crl_path = pki.revoke(ca, "box-1")
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(other.serial_number) is None
    # Renewing keeps the revocations (they live in issued.json, not only in the CRL).
    pki_crl.renew_crl(ca, crl_days=3)
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert pki_crl.crl_days_left(ca) == pytest.approx(3, abs=0.01)
    with pytest.raises(pki.PkiError, match="no certificate was issued"):
        pki.revoke(ca, "box-unknown")


def test_box_key_is_never_overwritten(tmp_path: Path) -> None:
    key, _ = pki.create_device_key_and_csr("box-1", tmp_path)
    before = key.read_bytes()
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.create_device_key_and_csr("box-1", tmp_path)
    assert key.read_bytes() == before


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator.cli.pki", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_operator_and_technician_flow(tmp_path: Path) -> None:
    ca_dir, box, broker = tmp_path / "ca", tmp_path / "box", tmp_path / "broker"
    steps = [
        ("ca-create", "--ca-dir", str(ca_dir), "--fed", "fed1"),
        ("server-cert", "--ca-dir", str(ca_dir), "--out", str(broker), "--host", "localhost"),
        ("client-cert", "--ca-dir", str(ca_dir), "--out", str(broker)),
        ("device-csr", "--device-id", "box-1", "--out", str(box)),
        (
            "sign",
            "--ca-dir",
            str(ca_dir),
            "--csr",
            str(box / "device-tls.csr"),
            "--device-id",
            "box-1",
            "--out",
            str(box / "device-tls.crt"),
        ),
        (
            "broker-config",
            "--ca-dir",
            str(ca_dir),
            "--server-dir",
            str(broker),
            "--out",
            str(broker),
            "--port",
            "18883",
        ),
        ("revoke", "--ca-dir", str(ca_dir), "--device-id", "box-1"),
        ("crl-renew", "--ca-dir", str(ca_dir), "--if-expires-within", "7"),
    ]
    for step in steps:
        r = run_cli(*step)
        assert r.returncode == 0, (step, r.stderr)
    assert "not renewed" in r.stdout  # 30 days left > 7
    assert "listener 18883" in (broker / "fedface.conf").read_text()
    assert mode(broker / "aggregator.key") == 0o600
    pki_issue.verify_chain((ca_dir / "ca.crt").read_bytes(), (box / "device-tls.crt").read_bytes())


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = run_cli(
        "sign",
        "--ca-dir",
        str(tmp_path / "none"),
        "--csr",
        __file__,
        "--device-id",
        "b",
        "--out",
        str(tmp_path / "x.crt"),
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: no CA in") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
