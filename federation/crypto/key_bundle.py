"""The federation key bundle: what a box needs to join, in one passphrase-protected file.

The commissioner (whoever ran ``fedface-aggregator keys create``) packs the federation's
CKKS secret context with the box's trust anchors (the broker CA certificate, the
aggregator's Ed25519 public key, federation id, key id, CKKS parameters, optionally the
broker URL) into one file that the technician carries to each box; ``fedface-edge
provision`` imports it and writes its parts 0600/0644.

File layout (version 1)::

    b"FFKB" | version (1 byte) | header length (4 bytes, big-endian) | header (JSON)
    | AES-256-GCM ciphertext of the payload (JSON, files base64) with its 16-byte tag

The header (kdf name and parameters, salt, nonce, format version) is the GCM associated
data, so changing any of it fails authentication. The key comes from the passphrase by
scrypt (n=2^15, r=8, p=1: ~0.1 s and 32 MiB on x86, under a second on a Pi 4) so a stolen
bundle cannot be brute-forced cheaply; a weak passphrase still can, so passphrases
shorter than ``MIN_PASSPHRASE_LENGTH`` are refused when creating one.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from federation.errors import KEY_FILE, KeyFileError

MAGIC = b"FFKB"
VERSION = 1
MIN_PASSPHRASE_LENGTH = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
# Bounds on what a header may ask for: a crafted bundle must not make the box spend
# gigabytes of memory in scrypt before the tag check can fail.
_MAX_SCRYPT_N = 2**20
_MAX_HEADER = 4096

SECRET_CONTEXT = "federation-secret.tenseal"
AGGREGATOR_PUB = "aggregator.pub"
CA_CERT = "ca.crt"
REQUIRED_FILES = (SECRET_CONTEXT, AGGREGATOR_PUB, CA_CERT)
# optional: the key holder's Ed25519 public key, which signs later key epochs
# (federation.crypto.epochs); a box without it cannot take a new epoch
KEYHOLDER_PUB = "keyholder.pub"


@dataclass(frozen=True)
class KeyBundle:
    """Decrypted bundle contents. ``files`` holds raw bytes by name (see REQUIRED_FILES)."""

    fed_id: str
    key_id: str
    params: dict[str, Any]
    aggregator_id: str = "aggregator"
    broker_url: str = ""
    created_at: float = field(default_factory=time.time)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        missing = [name for name in REQUIRED_FILES if name not in self.files]
        if missing:
            raise KeyFileError(KEY_FILE, f"key bundle lacks {', '.join(missing)}")


def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal_bundle(bundle: KeyBundle, passphrase: str) -> bytes:
    """Encrypt ``bundle`` under ``passphrase``; returns the file bytes."""
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise KeyFileError(
            KEY_FILE,
            f"the bundle passphrase must have at least {MIN_PASSPHRASE_LENGTH} characters "
            "(it is all that protects the federation secret key in transit)",
        )
    salt, nonce = os.urandom(16), os.urandom(12)
    header = json.dumps(
        {"v": VERSION, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
         "salt": salt.hex(), "nonce": nonce.hex(), "cipher": "aes-256-gcm"},
        sort_keys=True,
    ).encode()
    payload = json.dumps(
        {"fed_id": bundle.fed_id, "key_id": bundle.key_id, "params": bundle.params,
         "aggregator_id": bundle.aggregator_id, "broker_url": bundle.broker_url,
         "created_at": bundle.created_at,
         "files": {k: base64.b64encode(v).decode("ascii") for k, v in bundle.files.items()}},
        sort_keys=True,
    ).encode()
    key = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(key).encrypt(nonce, payload, MAGIC + bytes([VERSION]) + header)
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(header)) + header + sealed


def _parse_header(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    if len(data) < 9 or data[:4] != MAGIC:
        raise KeyFileError(KEY_FILE, "not a FedFace key bundle (bad magic)")
    if data[4] != VERSION:
        raise KeyFileError(
            KEY_FILE, f"key bundle format v{data[4]} is not supported (this box reads v{VERSION}):"
            " upgrade fedface on this box"
        )
    (size,) = struct.unpack(">I", data[5:9])
    if size > _MAX_HEADER or len(data) < 9 + size + 16:
        raise KeyFileError(KEY_FILE, "key bundle is truncated or corrupt")
    raw = data[9 : 9 + size]
    try:
        header = json.loads(raw)
        n, r, p = int(header["n"]), int(header["r"]), int(header["p"])
        bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce"])
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(KEY_FILE, "key bundle header is corrupt") from None
    if header.get("kdf") != "scrypt" or not (2 <= n <= _MAX_SCRYPT_N) or r > 32 or p > 16:
        raise KeyFileError(KEY_FILE, "key bundle asks for unsupported key derivation settings")
    return header, raw, data[9 + size :]


def open_bundle(data: bytes, passphrase: str) -> KeyBundle:
    """Decrypt and check a bundle. A wrong passphrase and a tampered file give the same
    error (GCM cannot tell them apart)."""
    header, raw_header, sealed = _parse_header(data)
    key = _kdf(passphrase, bytes.fromhex(header["salt"]), int(header["n"]), int(header["r"]),
               int(header["p"]))
    try:
        payload = AESGCM(key).decrypt(bytes.fromhex(header["nonce"]), sealed,
                                      MAGIC + bytes([VERSION]) + raw_header)
    except InvalidTag:
        raise KeyFileError(
            KEY_FILE, "wrong passphrase, or the file was altered or truncated"
        ) from None
    try:
        body = json.loads(payload)
        files = {k: base64.b64decode(v) for k, v in body["files"].items()}
        return KeyBundle(
            fed_id=str(body["fed_id"]), key_id=str(body["key_id"]), params=dict(body["params"]),
            aggregator_id=str(body.get("aggregator_id", "aggregator")),
            broker_url=str(body.get("broker_url", "")),
            created_at=float(body.get("created_at", 0.0)), files=files,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(KEY_FILE, f"key bundle payload is malformed: {exc}") from None
