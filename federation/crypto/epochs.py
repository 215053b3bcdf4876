"""Key epochs: a new CKKS secret context, sealed to each remaining box alone.

Revoking a box does not take back the federation secret it holds, so after a revocation
(or periodically) the key holder (whoever runs ``fedface-aggregator keys create``, on
an offline machine; never the aggregator) makes a new secret context, one epoch later,
and seals it to every box still in the federation:

- every box has an X25519 **exchange key** (``device-kx.key``, 0600, made at
  provisioning) whose public half travels in its enrolment request, signed by the box's
  Ed25519 device key over ``fed | device id | exchange key`` (``exchange_key_binding``),
  so the key holder seals only to a key the registered device vouched for;
- the sealed context is HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
  HKDF-SHA256, ChaCha20-Poly1305; ``cryptography`` >= 47) to that exchange key, with
  the header (federation, device id, recipient key, key id, epoch) as HPKE ``info``: a
  bundle opened by another device, or with another header, fails authentication;
- the whole file is signed by the **key holder's** Ed25519 key (``keyholder.key``; its
  public half reaches each box in the key bundle), because HPKE base mode says nothing
  about who sealed: without the signature the aggregator, which relays the bundles,
  could seal a context of its own to a box and then read that box's updates.

File layout (version 1)::

    b"FFSC" | version (1 byte) | header length (4 bytes, big-endian) | header (JSON)
    | HPKE enc || ciphertext | key holder's Ed25519 signature (64 bytes) over all before

A box refuses a bundle for an epoch not newer than its own (``old_epoch``): a replayed
older bundle must not bring back a key the revoked box knows.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from federation.crypto.ckks import (
    FederationContext,
    load_context,
    new_secret_context,
    public_context_bytes,
    require_secret,
)
from federation.crypto.ckks import secret_context_bytes as secret_bytes_of
from federation.crypto.key_files import read_secret_file, write_public_file, write_secret_file
from federation.crypto.keys import (
    PUBLIC_CONTEXT_NAME,
    SECRET_CONTEXT_NAME,
    load_or_create_keyholder_key,
    load_secret_context,
)
from federation.crypto.signing import public_key_from_hex
from federation.errors import BAD_SIGNATURE, KEY_FILE, MALFORMED, WRONG_KEY, FederationError
from federation.files import PUBLIC_DIR, make_dirs

MAGIC = b"FFSC"
VERSION = 1
SUITE_NAME = "hpke-base-x25519-hkdf-sha256-chacha20poly1305"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_INFO_LABEL = b"fedface-key-epoch-v1\0"
_BINDING_LABEL = b"fedface-exchange-key-v1\0"
_SIG_LEN = 64
_MAX_HEADER = 4096

EXCHANGE_KEY_NAME = "device-kx.key"
# Reasons of this module (stable strings, counted and logged like federation.errors').
WRONG_RECIPIENT = "wrong_recipient"
OLD_EPOCH = "old_epoch"


# -- the box's exchange key -------------------------------------------------------------


def generate_exchange_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def exchange_public_hex(key: X25519PrivateKey | X25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def exchange_public_from_hex(text: str) -> X25519PublicKey:
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise FederationError(MALFORMED, f"not an X25519 public key (64 hex characters): "
                              f"{exc}") from None


def write_exchange_key(path: Path, key: X25519PrivateKey) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return write_secret_file(path, pem)


def read_exchange_key(path: Path) -> X25519PrivateKey:
    data = read_secret_file(path, "X25519 exchange key")  # refuses a group/world-readable file
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise FederationError(KEY_FILE, f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise FederationError(KEY_FILE, f"{path} holds a {type(key).__name__}, not X25519")
    return key


def load_or_create_exchange_key(path: Path) -> X25519PrivateKey:
    if Path(path).exists():
        return read_exchange_key(path)
    key = generate_exchange_key()
    write_exchange_key(path, key)
    return key


def exchange_key_binding(fed: str, device_id: str, exchange_hex: str) -> bytes:
    """What a box's Ed25519 device key signs to vouch for its exchange key."""
    return _BINDING_LABEL + json.dumps([fed, device_id, exchange_hex]).encode()


def sign_exchange_key(device_key: Ed25519PrivateKey, fed: str, device_id: str,
                      exchange_hex: str) -> str:
    return device_key.sign(exchange_key_binding(fed, device_id, exchange_hex)).hex()


def verify_exchange_key(device_pub: Ed25519PublicKey, fed: str, device_id: str,
                        exchange_hex: str, signature_hex: str) -> X25519PublicKey:
    """The exchange key, if the device's registered signing key vouched for it."""
    pub = exchange_public_from_hex(exchange_hex)
    try:
        device_pub.verify(bytes.fromhex(signature_hex),
                          exchange_key_binding(fed, device_id, exchange_hex))
    except (InvalidSignature, ValueError):
        raise FederationError(BAD_SIGNATURE, f"the exchange key of {device_id} is not signed "
                              "by its registered device key") from None
    return pub


# -- sealing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedHeader:
    fed: str
    device: str
    recipient: str  # hex of the X25519 public key sealed to
    key_id: str
    epoch: int
    created_at: float

    def to_bytes(self) -> bytes:
        return json.dumps({"v": VERSION, "suite": SUITE_NAME, "fed": self.fed,
                           "device": self.device, "recipient": self.recipient,
                           "key_id": self.key_id, "epoch": self.epoch,
                           "created_at": self.created_at},
                          sort_keys=True, separators=(",", ":")).encode()


def seal_context(secret: FederationContext, secret_bytes: bytes, *, fed: str, device_id: str,
                 recipient: X25519PublicKey, keyholder: Ed25519PrivateKey) -> bytes:
    """The new secret context (its container bytes), sealed to one box and signed."""
    require_secret(secret)
    header = SealedHeader(fed, device_id, exchange_public_hex(recipient), secret.key_id,
                          secret.epoch, time.time()).to_bytes()
    sealed = _SUITE.encrypt(secret_bytes, recipient, info=_INFO_LABEL + header)
    body = MAGIC + bytes([VERSION]) + struct.pack(">I", len(header)) + header + sealed
    return body + keyholder.sign(body)


def read_header(data: bytes) -> SealedHeader:
    """The header of a sealed bundle (not yet authenticated: ``open_context`` does that)."""
    return _split(data)[0]


def _split(data: bytes) -> tuple[SealedHeader, bytes]:
    if len(data) < 9 + _SIG_LEN or data[:4] != MAGIC:
        raise FederationError(MALFORMED, "not a FedFace sealed key epoch (bad magic)")
    if data[4] != VERSION:
        raise FederationError(MALFORMED, f"sealed key epoch format v{data[4]} is not supported")
    (size,) = struct.unpack(">I", data[5:9])
    if size > _MAX_HEADER or len(data) < 9 + size + _SIG_LEN:
        raise FederationError(MALFORMED, "sealed key epoch is truncated")
    try:
        h = json.loads(data[9 : 9 + size])
        if h.get("suite") != SUITE_NAME or type(h["epoch"]) is not int:
            raise ValueError("suite/epoch")
        return SealedHeader(str(h["fed"]), str(h["device"]), str(h["recipient"]),
                            str(h["key_id"]), h["epoch"], float(h["created_at"])), \
            data[9 : 9 + size]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FederationError(MALFORMED, f"sealed key epoch header is corrupt: {exc}") from None


def open_context(data: bytes, *, fed: str, device_id: str, exchange_key: X25519PrivateKey,
                 keyholder: Ed25519PublicKey, after_epoch: int) -> FederationContext:
    """Check and open a sealed bundle meant for this box; returns the new secret context.

    Refuses (FederationError): a bundle not signed by the federation's key holder
    (``bad_signature``), for another federation, device or exchange key
    (``wrong_recipient``), for an epoch not after ``after_epoch`` (``old_epoch``), or
    whose context is not the one the header names (``wrong_key``)."""
    header, raw_header = _split(data)
    body, signature = data[:-_SIG_LEN], data[-_SIG_LEN:]
    try:
        keyholder.verify(signature, body)
    except InvalidSignature:
        raise FederationError(BAD_SIGNATURE, "the sealed key epoch is not signed by this "
                              "federation's key holder (keyholder.pub)") from None
    mine = exchange_public_hex(exchange_key)
    if header.fed != fed or header.device != device_id or header.recipient != mine:
        raise FederationError(WRONG_RECIPIENT, f"sealed key epoch is for {header.device} of "
                              f"{header.fed}, not this box ({device_id} of {fed})")
    if header.epoch <= after_epoch:
        raise FederationError(OLD_EPOCH, f"sealed key epoch {header.epoch} is not newer than "
                              f"this box's epoch {after_epoch}: a replayed older key")
    try:
        secret_bytes = _SUITE.decrypt(body[9 + len(raw_header):], exchange_key,
                                      info=_INFO_LABEL + raw_header)
    except (InvalidTag, ValueError):
        raise FederationError(WRONG_RECIPIENT, "the sealed key epoch does not open with this "
                              "box's exchange key (sealed to another box, or altered)") from None
    ctx = load_context(secret_bytes)
    require_secret(ctx)
    if ctx.key_id != header.key_id or ctx.epoch != header.epoch:
        raise FederationError(WRONG_KEY, f"sealed context is key {ctx.key_id} epoch {ctx.epoch},"
                              f" its header says {header.key_id} epoch {header.epoch}")
    return ctx


# -- the key holder's rotation ------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """A box the new epoch is sealed to, as the aggregator's ``devices recipients`` lists
    it: its registered Ed25519 key and the exchange key that key signed."""

    device_id: str
    signing_key: str  # hex, raw Ed25519 public key
    exchange_key: str  # hex, raw X25519 public key
    exchange_sig: str  # hex, Ed25519 signature over exchange_key_binding(...)


def read_recipients(data: bytes, fed: str) -> list[Recipient]:
    """Parse a recipients file (``fedface-aggregator devices recipients``) of ``fed``."""
    try:
        body = json.loads(data)
        if body.get("fed") != fed:
            raise ValueError(f"it is for federation {body.get('fed')!r}, not {fed!r}")
        return [Recipient(str(d["device_id"]), str(d["signing_key"]), str(d["exchange_key"]),
                          str(d["exchange_sig"])) for d in body["devices"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FederationError(MALFORMED, f"recipients file is malformed: {exc}") from None


@dataclass(frozen=True)
class Rotation:
    key_id: str
    epoch: int
    public_context: Path
    sealed: dict[str, Path]  # device id -> its sealed bundle
    seconds: float


def rotate_keys(keys_dir: Path, fed: str, recipients: list[Recipient], out_dir: Path,
                *, exclude: frozenset[str] = frozenset()) -> Rotation:
    """Make the next epoch's secret context, seal it to each recipient (after checking
    its exchange key against its signing key), write ``out_dir/federation-public.tenseal``
    (for the aggregator) and ``out_dir/sealed/<device>.ffsc``, then replace the key
    holder's own secret and public contexts in ``keys_dir``. Nothing in ``keys_dir``
    changes unless every bundle was written."""
    t0 = time.perf_counter()
    keys_dir, out_dir = Path(keys_dir), Path(out_dir)
    current = load_secret_context(keys_dir / SECRET_CONTEXT_NAME)
    keyholder, _ = load_or_create_keyholder_key(keys_dir)
    chosen = [r for r in recipients if r.device_id not in exclude]
    if not chosen:
        raise FederationError(MALFORMED, "no recipient left: a new epoch nobody can open")
    checked = [(r, verify_exchange_key(public_key_from_hex(r.signing_key), fed, r.device_id,
                                       r.exchange_key, r.exchange_sig)) for r in chosen]
    new = new_secret_context(current.params, epoch=current.epoch + 1)
    new_secret = secret_bytes_of(new)
    make_dirs(out_dir / "sealed", PUBLIC_DIR)  # sealed files: only their box can open them
    sealed: dict[str, Path] = {}
    for r, pub in checked:
        data = seal_context(new, new_secret, fed=fed, device_id=r.device_id, recipient=pub,
                            keyholder=keyholder)
        sealed[r.device_id] = write_public_file(out_dir / "sealed" / f"{r.device_id}.ffsc",
                                                data, overwrite=True)
    public = write_public_file(out_dir / PUBLIC_CONTEXT_NAME, public_context_bytes(new),
                               overwrite=True)
    write_secret_file(keys_dir / SECRET_CONTEXT_NAME, new_secret, overwrite=True)
    write_public_file(keys_dir / PUBLIC_CONTEXT_NAME, public_context_bytes(new), overwrite=True)
    return Rotation(new.key_id, new.epoch, public, sealed, time.perf_counter() - t0)
