"""Ed25519 signatures: every envelope is signed by its sender's key.

Keys are ``cryptography`` Ed25519 objects. On disk they are PEM (see ``keys``); in
configs and registries a public key is 64 hex characters (raw 32 bytes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import BAD_SIGNATURE, MALFORMED, UNKNOWN_DEVICE, FederationError

SIGNATURE_HEX_LEN = 128


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Raw public key as 64 hex characters (accepts a private key for convenience)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise FederationError(
            MALFORMED, f"not an Ed25519 public key (expected 64 hex characters): {exc}"
        ) from None


def sign(private_key: Ed25519PrivateKey, data: bytes) -> str:
    """Signature over ``data`` as 128 hex characters."""
    return private_key.sign(data).hex()


def verify(public_key: Ed25519PublicKey, data: bytes, signature_hex: str) -> None:
    """Raise FederationError(bad_signature) unless ``signature_hex`` signs ``data``."""
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        raise FederationError(BAD_SIGNATURE, "signature is not hex") from None
    if len(sig) != 64:
        raise FederationError(BAD_SIGNATURE, "missing or truncated signature")
    try:
        public_key.verify(sig, data)
    except InvalidSignature:
        raise FederationError(BAD_SIGNATURE, "signature does not match") from None


class KeyRing:
    """Known public keys by sender id (device ids and the aggregator id)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey | str] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for sender, key in (keys or {}).items():
            self.add(sender, key)

    def add(self, sender: str, key: Ed25519PublicKey | str) -> None:
        self._keys[sender] = public_key_from_hex(key) if isinstance(key, str) else key

    def remove(self, sender: str) -> None:
        self._keys.pop(sender, None)

    def get(self, sender: str) -> Ed25519PublicKey:
        """The sender's key, or FederationError(unknown_device)."""
        try:
            return self._keys[sender]
        except KeyError:
            raise FederationError(
                UNKNOWN_DEVICE, f"no public key registered for {sender!r}"
            ) from None

    def __contains__(self, sender: object) -> bool:
        return sender in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def to_hex(self) -> dict[str, str]:
        return {sender: public_key_hex(key) for sender, key in sorted(self._keys.items())}
