"""The signed message envelope every MQTT payload is (docs/protocol.md, "Messages").

Wire format: ``b"FFE1"`` + 4-byte big-endian header length + canonical JSON header
(sorted keys, no spaces, UTF-8) + raw chunk bytes. The signature covers the canonical
JSON of every header field but ``sig``; the payload is covered through
``chunk_sha256``. ``decode`` is strict: anything unexpected is ``malformed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.crypto.signing import KeyRing, sign, verify
from federation.errors import INTEGRITY, MALFORMED, WRONG_FEDERATION, FederationError

MAGIC = b"FFE1"
VERSION = 1
KINDS = frozenset({"announce", "update", "result", "ack", "status", "partial", "key"})
DEFAULT_MAX_HEADER = 4096
_LEN = struct.Struct(">I")

# Ids appear in MQTT topics: no '/', '+', '#', no spaces. \Z, not $: Python's $ also
# matches before a trailing newline (bench.federation.fuzz found "sig\n" accepted).
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_MSG = re.compile(r"^[0-9a-f]{8,64}\Z")
_SIG = re.compile(r"^(|[0-9a-f]{128})\Z")
_MODEL_MAX = 128
_INT_MAX = 2**53


@dataclass(frozen=True)
class Envelope:
    """One signed message (one chunk of a blob). ``sig`` is "" until signed."""

    kind: str
    fed: str
    sender: str
    round: int
    model: str
    msg: str
    blob_sha256: str
    blob_size: int
    index: int
    count: int
    chunk_sha256: str
    ts: float
    payload: bytes = dataclasses.field(default=b"", repr=False)
    sig: str = ""
    v: int = VERSION

    def header(self, *, with_sig: bool = True) -> dict[str, Any]:
        h = {name: getattr(self, name) for name in _HEADER_FIELDS}
        if not with_sig:
            del h["sig"]
        return h

    def signing_bytes(self) -> bytes:
        return canonical_json(self.header(with_sig=False))


# Every field but the payload, in declaration order (computed once: dataclasses.fields
# per message showed in the aggregator's per-update profile).
_HEADER_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope) if f.name != "payload")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# Every header field and its type, built once (validate runs on every message).
_FIELD_TYPES: dict[str, type] = {
    "v": int, "kind": str, "fed": str, "sender": str, "round": int, "model": str,
    "msg": str, "blob_sha256": str, "blob_size": int, "index": int, "count": int,
    "chunk_sha256": str, "ts": float, "sig": str,
}
_FIELD_NAMES = frozenset(_FIELD_TYPES)


def validate(env: Envelope) -> None:
    """Check types, ranges and formats of every header field (FederationError malformed)."""
    for name, typ in _FIELD_TYPES.items():
        value = getattr(env, name)
        ok = (isinstance(value, typ) and not isinstance(value, bool)) if typ is not float else (
            type(value) is float and math.isfinite(value))
        if not ok:
            raise FederationError(MALFORMED, f"envelope field {name!r} must be {typ.__name__}")
    if env.v != VERSION:
        raise FederationError(MALFORMED, f"unsupported envelope version {env.v}")
    if env.kind not in KINDS:
        raise FederationError(MALFORMED, f"unknown envelope kind {env.kind!r}")
    for name in ("fed", "sender"):
        if not ID_RE.match(getattr(env, name)):
            raise FederationError(MALFORMED, f"envelope {name} is not a valid id")
    if len(env.model) > _MODEL_MAX or any(c in env.model for c in "\x00\n"):
        raise FederationError(MALFORMED, "envelope model version too long or has control chars")
    if not _MSG.match(env.msg):
        raise FederationError(MALFORMED, "envelope msg id must be 8-64 lowercase hex")
    for name in ("blob_sha256", "chunk_sha256"):
        if not _HEX64.match(getattr(env, name)):
            raise FederationError(MALFORMED, f"envelope {name} must be 64 lowercase hex")
    if not _SIG.match(env.sig):
        raise FederationError(MALFORMED, "envelope sig must be 128 lowercase hex")
    if not 0 <= env.round < _INT_MAX or not 0 <= env.blob_size < _INT_MAX:
        raise FederationError(MALFORMED, "envelope round/blob_size out of range")
    if not 1 <= env.count < _INT_MAX or not 0 <= env.index < env.count:
        raise FederationError(MALFORMED, "envelope index/count out of range")
    if len(env.payload) > env.blob_size:
        raise FederationError(MALFORMED, "chunk larger than the blob it belongs to")


def encode(env: Envelope, *, validated: bool = False) -> bytes:
    """``validated``: the caller has just had ``env`` validated (``sign_envelope`` does),
    so the check is not run twice per message."""
    if not validated:
        validate(env)
    header = canonical_json(env.header())
    return MAGIC + _LEN.pack(len(header)) + header + env.payload


def decode(data: bytes, max_header: int = DEFAULT_MAX_HEADER) -> Envelope:
    """Parse one envelope strictly. Does NOT verify the signature: see ``verify_envelope``."""
    if not isinstance(data, (bytes, bytearray)):
        raise FederationError(MALFORMED, "envelope must be bytes")
    if len(data) < 8:
        raise FederationError(MALFORMED, "envelope shorter than its fixed prefix")
    if bytes(data[:4]) != MAGIC:
        raise FederationError(MALFORMED, "not a FedFace envelope (bad magic)")
    (hlen,) = _LEN.unpack_from(data, 4)
    if hlen > max_header:
        raise FederationError(MALFORMED, f"envelope header of {hlen} bytes exceeds {max_header}")
    if 8 + hlen > len(data):
        raise FederationError(MALFORMED, "envelope truncated inside its header")
    try:
        header = json.loads(bytes(data[8 : 8 + hlen]).decode("utf-8"),
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FederationError(MALFORMED, f"envelope header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FederationError(MALFORMED, "envelope header is not a JSON object")
    expected = _FIELD_NAMES
    if set(header) != expected:
        extra, missing = sorted(set(header) - expected), sorted(expected - set(header))
        raise FederationError(MALFORMED, f"envelope fields: unknown {extra}, missing {missing}")
    if type(header["ts"]) is int:
        header["ts"] = float(header["ts"])
    env = Envelope(payload=bytes(data[8 + hlen :]), **header)
    validate(env)
    return env


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def sign_envelope(env: Envelope, private_key: Ed25519PrivateKey, *,
                  payload_hashed: bool = False) -> Envelope:
    """A copy of ``env`` with ``sig`` set (and chunk_sha256 checked against the payload,
    unless ``payload_hashed``: the caller computed chunk_sha256 from this payload itself),
    validated: ``encode(signed, validated=True)`` need not check it again."""
    if not payload_hashed and hashlib.sha256(env.payload).hexdigest() != env.chunk_sha256:
        raise ValueError("chunk_sha256 does not match the payload")
    # split_blob builds envelopes unsigned: no copy of each one just to clear ``sig``
    unsigned = env if env.sig == "" else dataclasses.replace(env, sig="")
    validate(unsigned)
    return dataclasses.replace(env, sig=sign(private_key, unsigned.signing_bytes()))


def verify_envelope(env: Envelope, keyring: KeyRing, *, fed: str | None = None) -> None:
    """Check federation (if ``fed`` given), sender key, signature and chunk hash.

    Reasons: wrong_federation, unknown_device, bad_signature, integrity.
    """
    if fed is not None and env.fed != fed:
        raise FederationError(WRONG_FEDERATION, f"message for federation {env.fed!r}, not {fed!r}")
    key = keyring.get(env.sender)
    verify(key, env.signing_bytes(), env.sig)
    if hashlib.sha256(env.payload).hexdigest() != env.chunk_sha256:
        raise FederationError(INTEGRITY, f"chunk {env.index} of {env.msg} fails its sha256")
