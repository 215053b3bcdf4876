"""Devices of the federation and their Ed25519 public keys; revocation.

The registry is the aggregator's only notion of who may contribute: an update from a
device that is not here (or revoked) is rejected before its signature is even checked.
Keys are stored as raw 32-byte Ed25519 public keys.
"""

from __future__ import annotations

import builtins
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregator.state.store import Store

log = logging.getLogger(__name__)

# Device ids become MQTT topic levels: no wildcards, no separators, no whitespace.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: $ allows a final \n


class RegistryError(Exception):
    """A device id or public key is invalid, or the device is unknown / already known."""


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: bytes
    added_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def fingerprint(self) -> str:
        return self.public_key.hex()[:16]


def read_devices(db: sqlite3.Connection) -> list[Device]:
    """Every device, revoked ones included (also on a read-only connection: the intake
    shards, aggregator.intake.shards, read the registry without opening the store)."""
    rows = db.execute(
        "SELECT device_id, public_key, added_at, revoked_at FROM devices ORDER BY device_id"
    )
    return [Device(str(r[0]), bytes(r[1]), float(r[2]), r[3]) for r in rows]


def validate_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise RegistryError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(it becomes an MQTT topic level)"
        )
    return device_id


def load_public_key_bytes(path: Path) -> bytes:
    """Read an Ed25519 public key from a PEM file, a raw 32-byte file or a hex text file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read public key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise RegistryError(f"{path} holds a PRIVATE key: give the device's public key file")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise RegistryError(f"{path} is not a valid PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise RegistryError(f"{path} is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) == 32:
        return data
    raise RegistryError(
        f"{path} is not an Ed25519 public key (expected PEM, 32 raw bytes or 64 hex chars)"
    )


class DeviceRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, device_id: str, public_key: bytes, *, fed: str = "",
            exchange: tuple[str, str] | None = None) -> Device:
        """Register a device; ``exchange``: its X25519 exchange key and the device key's
        signature over it (checked before anything is written)."""
        validate_device_id(device_id)
        if len(public_key) != 32:
            raise RegistryError("an Ed25519 public key is 32 bytes")
        if exchange is not None:
            _check_exchange(public_key, fed, device_id, *exchange)
        existing = self.get(device_id)
        if existing is not None and existing.active:
            raise RegistryError(f"device {device_id} is already registered")
        if existing is not None:
            raise RegistryError(
                f"device {device_id} was revoked; re-provision it under a new device id"
            )
        now = time.time()
        self.store.db.execute(
            "INSERT INTO devices(device_id, public_key, added_at) VALUES (?, ?, ?)",
            (device_id, public_key, now),
        )
        if exchange is not None:
            self._store_exchange(device_id, *exchange)
        log.info("device %s added (key %s...)", device_id, public_key.hex()[:16])
        return Device(device_id, public_key, now, None)

    def revoke(self, device_id: str) -> Device:
        device = self.get(device_id)
        if device is None:
            raise RegistryError(f"unknown device {device_id}")
        if not device.active:
            raise RegistryError(f"device {device_id} is already revoked")
        now = time.time()
        self.store.db.execute("UPDATE devices SET revoked_at=? WHERE device_id=?", (now, device_id))
        log.info("device %s revoked", device_id)
        return Device(device.device_id, device.public_key, device.added_at, now)

    def get(self, device_id: str) -> Device | None:
        row = self.store.db.execute(
            "SELECT device_id, public_key, added_at, revoked_at FROM devices WHERE device_id=?",
            (device_id,),
        ).fetchone()
        return None if row is None else Device(str(row[0]), bytes(row[1]), float(row[2]), row[3])

    def list(self) -> list[Device]:
        return read_devices(self.store.db)

    def active_ids(self) -> set[str]:
        rows = self.store.db.execute("SELECT device_id FROM devices WHERE revoked_at IS NULL")
        return {str(r[0]) for r in rows}

    def active_key(self, device_id: str) -> bytes | None:
        device = self.get(device_id)
        return device.public_key if device is not None and device.active else None

    def set_exchange_key(self, fed: str, device_id: str, exchange_hex: str,
                         signature_hex: str) -> None:
        """Register the box's X25519 exchange key, once its device key vouched for it."""
        device = self.get(device_id)
        if device is None or not device.active:
            raise RegistryError(f"device {device_id} is not an active device")
        _check_exchange(device.public_key, fed, device_id, exchange_hex, signature_hex)
        self._store_exchange(device_id, exchange_hex, signature_hex)

    def _store_exchange(self, device_id: str, exchange_hex: str, signature_hex: str) -> None:
        self.store.db.execute(
            "INSERT OR REPLACE INTO exchange_keys(device_id, exchange_key, signature) "
            "VALUES (?, ?, ?)", (device_id, exchange_hex, signature_hex))

    def recipients(self) -> tuple[builtins.list[dict[str, str]], builtins.list[str]]:
        """Active devices with their signing and exchange keys (what the key holder seals
        a new epoch to), and the active devices that have no exchange key."""
        keys = {str(r[0]): (str(r[1]), str(r[2])) for r in self.store.db.execute(
            "SELECT device_id, exchange_key, signature FROM exchange_keys")}
        found, missing = [], []
        for d in self.list():
            if not d.active:
                continue
            if d.device_id not in keys:
                missing.append(d.device_id)
                continue
            kx, sig = keys[d.device_id]
            found.append({"device_id": d.device_id, "signing_key": d.public_key.hex(),
                          "exchange_key": kx, "exchange_sig": sig})
        return found, missing


def _check_exchange(public_key: bytes, fed: str, device_id: str, exchange_hex: str,
                    signature_hex: str) -> None:
    from federation.crypto.epochs import verify_exchange_key
    from federation.errors import FederationError

    try:
        verify_exchange_key(Ed25519PublicKey.from_public_bytes(public_key), fed, device_id,
                            exchange_hex, signature_hex)
    except FederationError as exc:
        raise RegistryError(exc.message) from None
