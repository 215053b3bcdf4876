"""Key files on disk: private files 0600, written atomically, refused when readable by
group or others; and the Ed25519 signing keys (PEM) of boxes and aggregators.

Kept apart from the CKKS contexts (``federation.crypto.keys``, which re-exports these) so that
a process that only signs or verifies, such as an aggregator's intake shard, does not
load TenSEAL.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import INSECURE_KEY_FILE, KEY_FILE, KeyFileError
from federation.files import write_atomic


def _write_key_file(path: Path, data: bytes, mode: int, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(KEY_FILE, f"{path} already exists; refusing to overwrite a key file")
    return write_atomic(path, data, mode=mode)


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    return _write_key_file(Path(path), data, 0o600, overwrite)


def write_public_file(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` with mode 0644, atomically."""
    return _write_key_file(Path(path), data, 0o644, overwrite)


def check_permissions(path: Path) -> None:
    """Raise KeyFileError(insecure_key_file) if a secret file is readable by group/others."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(
            INSECURE_KEY_FILE,
            f"{path} has mode {mode:04o}: a secret key file must be private; run "
            f"`chmod 600 {path}`",
        )


def read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(KEY_FILE, f"{what} not found at {path}") from None
    except OSError as exc:
        raise KeyFileError(KEY_FILE, f"cannot read {what} at {path}: {exc.strerror}") from None


def read_secret_file(path: Path, what: str) -> bytes:
    data = read_key_file(path, what)
    check_permissions(path)
    return data


# -- Ed25519 --------------------------------------------------------------------------


def write_private_key(path: Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return write_secret_file(path, pem, overwrite=overwrite)


def write_public_key(path: Path, key: Ed25519PublicKey, *, overwrite: bool = False) -> Path:
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return write_public_file(path, pem, overwrite=overwrite)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    data = read_secret_file(path, "Ed25519 private key")
    key = _parse_pem(path, "private", lambda: serialization.load_pem_private_key(data, None))
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(KEY_FILE, f"{path} holds a {type(key).__name__}, not Ed25519")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    data = read_key_file(path, "Ed25519 public key")
    key = _parse_pem(path, "public", lambda: serialization.load_pem_public_key(data))
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(KEY_FILE, f"{path} holds a {type(key).__name__}, not Ed25519")
    return key


def _parse_pem(path: Path, kind: str, load: Callable[[], object]) -> object:
    try:
        return load()
    except (ValueError, TypeError) as exc:
        raise KeyFileError(KEY_FILE, f"{path} is not a PEM {kind} key: {exc}") from None


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The device/aggregator signing key at ``path``, created (0600) on first use."""
    if Path(path).exists():
        return read_private_key(path)
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key)
    return key
