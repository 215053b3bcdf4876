"""Provisioning an edge box: its keys, the federation key bundle, its certificate, its config.

Files under the box's data dir (``/var/lib/fedface`` on an installed box, 0700)::

    tls/device-tls.key   ECDSA P-256 TLS key (0600): never leaves the box
    tls/device-tls.csr   certificate request for the operator
    tls/device-tls.crt   the certificate the operator returns (CN = device id)
    tls/ca.crt           federation CA (from the key bundle)
    keys/device.key      Ed25519 message-signing key (0600)
    keys/device-kx.key   X25519 exchange key (0600): new key epochs are sealed to it
    keys/keyholder.pub   the key holder's key, which signs them (from the key bundle)
    keys/federation-secret.tenseal, keys/aggregator.pub, keys/trust.json (from the bundle)
    <device>.request.json  what the technician hands to the operator (no secret in it)
    edge.toml            the box config

The TLS key uses ECDSA P-256 for the same reason as ``aggregator.pki.authority`` (accepted by
Mosquitto, paho and the OpenSSL builds of Pi OS and JetPack for TLS 1.2 and 1.3).

May import: edge.errors, edge.config, edge.vision, federation, models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import (
    BoxConfig,
    BoxSection,
    BrokerSection,
    CameraSection,
    DoctorSection,
    FederationSection,
)
from edge.errors import FedFaceError
from federation.crypto.epochs import (
    EXCHANGE_KEY_NAME,
    exchange_public_hex,
    load_or_create_exchange_key,
    sign_exchange_key,
)
from federation.crypto.fingerprint import request_fingerprint_lines
from federation.crypto.key_bundle import (
    AGGREGATOR_PUB,
    CA_CERT,
    KEYHOLDER_PUB,
    SECRET_CONTEXT,
    KeyBundle,
    open_bundle,
)
from federation.crypto.keys import (
    load_or_create_private_key,
    load_secret_context,
    write_public_file,
    write_secret_file,
)
from federation.crypto.signing import public_key_from_hex, public_key_hex
from federation.errors import KeyFileError
from federation.files import PRIVATE_DIR, make_dirs
from models.federated_parts import DEFAULT_PART

log = logging.getLogger(__name__)

REQUEST_VERSION = 1


class ProvisionError(FedFaceError):
    """Provisioning cannot go on; the message says what to fix."""

    exit_code = 8


@dataclass(frozen=True)
class BoxFiles:
    data_dir: Path

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tls_key(self) -> Path:
        return self.tls_dir / "device-tls.key"

    @property
    def csr(self) -> Path:
        return self.tls_dir / "device-tls.csr"

    @property
    def cert(self) -> Path:
        return self.tls_dir / "device-tls.crt"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / CA_CERT

    @property
    def device_key(self) -> Path:
        return self.keys_dir / "device.key"

    @property
    def secret_context(self) -> Path:
        return self.keys_dir / SECRET_CONTEXT

    @property
    def aggregator_pub(self) -> Path:
        return self.keys_dir / AGGREGATOR_PUB

    @property
    def trust(self) -> Path:
        return self.keys_dir / "trust.json"

    def request(self, device_id: str) -> Path:
        return self.data_dir / f"{device_id}.request.json"

    def private_dirs(self) -> None:
        for d in (self.data_dir, self.tls_dir, self.keys_dir):
            make_dirs(d, PRIVATE_DIR)
            d.chmod(0o700)


def import_bundle(files: BoxFiles, bundle_bytes: bytes, passphrase: str) -> KeyBundle:
    """Decrypt the federation key bundle and install its parts (secret context 0600).
    Re-importing the same federation key is a no-op; a different one is refused."""
    try:
        bundle = open_bundle(bundle_bytes, passphrase)
    except KeyFileError as exc:  # a typo is not an internal error (a walkthrough saw one)
        raise ProvisionError(f"cannot open the key bundle: {exc.message}",
                             hint="check the passphrase (--passphrase-file, "
                             "FEDFACE_BUNDLE_PASSPHRASE) and that the bundle is the one "
                             "`fedface-aggregator keys bundle` wrote for this box") from None
    files.private_dirs()
    if files.trust.exists():
        old = json.loads(files.trust.read_text())
        if old.get("key_id") != bundle.key_id:
            same_fed = old.get("fed_id") == bundle.fed_id
            raise ProvisionError(
                f"this box already holds federation key {old.get('key_id')} "
                f"({old.get('fed_id')}); the bundle is for {bundle.key_id} ({bundle.fed_id})"
                + (": another key epoch of the same federation" if same_fed else ""),
                hint=(("a registered box takes each new key epoch from the aggregator by "
                       "itself (`join`); to provision anew, use a fresh --data-dir and a new "
                       "device id (its keys and certificate are registered under its id)")
                      if files.cert.exists() else
                      ("this box has no certificate yet: provision it in a fresh "
                       "--data-dir from the current bundle, under the same device id if "
                       "`devices add` refused its request (it registers nothing of a box "
                       "of another key), else under a new one")
                      if same_fed else "to move the box to another federation, provision "
                      "a fresh --data-dir under a new device id"))
    write_secret_file(files.secret_context, bundle.files[SECRET_CONTEXT], overwrite=True)
    ctx = load_secret_context(files.secret_context)  # also checks it holds the secret key
    if ctx.key_id != bundle.key_id:
        raise ProvisionError(f"the bundle's secret context is key {ctx.key_id}, its manifest "
                             f"says {bundle.key_id}: the bundle is inconsistent",
                             hint="ask the commissioner for a new bundle")
    write_public_file(files.aggregator_pub, bundle.files[AGGREGATOR_PUB], overwrite=True)
    if KEYHOLDER_PUB in bundle.files:  # signs later key epochs (edge.federated.epochs)
        write_public_file(files.keys_dir / KEYHOLDER_PUB, bundle.files[KEYHOLDER_PUB],
                          overwrite=True)
    write_public_file(files.ca_cert, bundle.files[CA_CERT], overwrite=True)
    trust = {"fed_id": bundle.fed_id, "key_id": bundle.key_id, "params": bundle.params,
             "aggregator_id": bundle.aggregator_id, "broker_url": bundle.broker_url,
             "bundle_created_at": bundle.created_at}
    write_public_file(files.trust, json.dumps(trust, indent=2).encode(), overwrite=True)
    log.info("imported federation key %s of %s", bundle.key_id, bundle.fed_id)
    return bundle


def read_trust(files: BoxFiles) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(files.trust.read_text())
    except FileNotFoundError:
        raise ProvisionError("no federation key bundle imported on this box",
                             hint="fedface-edge provision --bundle FILE") from None
    return data


def create_identity(files: BoxFiles, device_id: str, fed_id: str) -> Path:
    """The box's TLS key + CSR and its Ed25519 signing key (kept if they exist), and the
    request file for the operator. Returns the request path."""
    files.private_dirs()
    if files.tls_key.exists():
        key = serialization.load_pem_private_key(files.tls_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError(f"{files.tls_key} is not an EC key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_secret_file(files.tls_key, pem)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    write_public_file(files.csr, csr_pem, overwrite=True)
    signing_key = load_or_create_private_key(files.device_key)
    # the key holder seals each new key epoch to this X25519 key; the device key vouches
    # for it (federation.crypto.epochs)
    kx = exchange_public_hex(load_or_create_exchange_key(files.keys_dir / EXCHANGE_KEY_NAME))
    # the key it imported: `devices add` refuses a box of another key (an old bundle kept
    # from before a rotation) before it is registered, not after it sat out every round
    ctx = load_secret_context(files.secret_context)
    request = {"v": REQUEST_VERSION, "device_id": device_id, "fed": fed_id,
               "csr": csr_pem.decode("ascii"), "signing_key": public_key_hex(signing_key),
               "exchange_key": kx,
               "exchange_sig": sign_exchange_key(signing_key, fed_id, device_id, kx),
               "key_id": ctx.key_id, "key_epoch": ctx.epoch}
    path = files.request(device_id)
    write_public_file(path, json.dumps(request, indent=2).encode(), overwrite=True)
    return path


def request_fingerprints(request_path: Path) -> list[str]:
    """What the technician reads to the operator, who sees the same lines from
    ``fedface-aggregator devices add``: a request swapped on the way shows other values."""
    data = json.loads(Path(request_path).read_text())
    raw = public_key_from_hex(str(data["signing_key"])).public_bytes_raw()
    return request_fingerprint_lines(str(data["csr"]).encode(), raw)


def install_certificate(files: BoxFiles, device_id: str, cert_pem: bytes,
                        ca_pem: bytes | None = None) -> x509.Certificate:
    """Check the operator's certificate (issued by the bundle's CA, for this device id,
    for this box's key) and install it."""
    if not files.ca_cert.exists():
        raise ProvisionError("import the key bundle before installing the certificate",
                             hint="fedface-edge provision --bundle FILE")
    ca_known = files.ca_cert.read_bytes()
    try:
        ca = x509.load_pem_x509_certificate(ca_known)
        cert = x509.load_pem_x509_certificate(cert_pem)
        if ca_pem is not None and x509.load_pem_x509_certificate(ca_pem) != ca:
            raise ProvisionError("the operator's CA certificate is not the one in the key "
                                 "bundle", hint="check that both come from the same federation")
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ProvisionError(f"the certificate was not issued by the federation CA: {exc}",
                             hint="ask the operator to sign this box's request again") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != device_id:
        raise ProvisionError(f"the certificate is for {cns[0].value if cns else '?'!r}, "
                             f"this box is {device_id!r}", hint="wrong reply file?")
    key = serialization.load_pem_private_key(files.tls_key.read_bytes(), password=None)
    if cert.public_key() != key.public_key():
        raise ProvisionError("the certificate does not match this box's TLS key",
                             hint="it was issued for an older request: send the current "
                             f"{files.request(device_id).name} to the operator")
    write_public_file(files.cert, cert_pem, overwrite=True)
    return cert


def read_reply(path: Path) -> tuple[str, bytes, bytes]:
    """(device id, certificate PEM, CA PEM) from the operator's reply file."""
    try:
        data = json.loads(Path(path).read_text())
        return str(data["device_id"]), data["cert"].encode(), data["ca_cert"].encode()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvisionError(f"{path} is not a reply of `fedface-aggregator devices add`: "
                             f"{exc}") from None


def build_config(files: BoxFiles, device_id: str, trust: dict[str, Any], broker_url: str,
                 camera: str, model_dir: Path | None, part: str = DEFAULT_PART) -> BoxConfig:
    return BoxConfig(
        box=BoxSection(device_id=device_id, fed=trust["fed_id"], data_dir=files.data_dir,
                       model_dir=model_dir),
        camera=CameraSection(source=camera),
        broker=BrokerSection(url=broker_url, ca_file=files.ca_cert, cert_file=files.cert,
                             key_file=files.tls_key),
        federation=FederationSection(
            key_id=trust["key_id"], aggregator_id=trust.get("aggregator_id", "aggregator"),
            secret_context=files.secret_context, device_key=files.device_key,
            aggregator_key=files.aggregator_pub, part=part),
        doctor=DoctorSection(),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_box_config(config: BoxConfig) -> str:
    """TOML with every key's description as a comment above it."""
    lines = ["# FedFace edge box configuration (written by `fedface-edge provision`).",
             "# Unknown keys are rejected; see docs/operations.md for every key.", ""]
    for section_name in BoxConfig.model_fields:
        section = getattr(config, section_name)
        if section is None:  # an optional section left out (events: docs/operations.md)
            lines += [f"# [{section_name}] (optional; see docs/operations.md)", ""]
            continue
        lines.append(f"[{section_name}]")
        for name, fld in type(section).model_fields.items():
            value = getattr(section, name)
            lines.append(f"# {fld.description}")
            if value is None:
                lines.append(f"# {name} =")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def write_config(path: Path, config: BoxConfig) -> None:
    write_public_file(path, render_box_config(config).encode(), overwrite=True)
    path.chmod(0o640)


def probe_camera(source: str) -> tuple[int, int]:
    """Open the source and read one frame: (width, height)."""
    from edge.vision.capture import open_source
    from edge.vision.frame_source import Backoff, SourceError

    with open_source(source, Backoff(max_attempts=0)) as frames:
        for frame in frames:
            h, w = frame.image.shape[:2]
            return int(w), int(h)
    raise SourceError(source, "opened but gave no frame",
                      hint="check the camera cable/stream, or pick another source")
