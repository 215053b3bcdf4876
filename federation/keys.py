"""Key and context files: written atomically, secrets never readable by others.

Secret files (the CKKS secret context, Ed25519 private keys) are created with
``os.open(O_CREAT | O_EXCL, 0o600)`` under a temporary name in the target directory and
renamed into place, so they are never world-readable, not even for an instant, and a
crash never leaves a half-written key. Public files are 0644.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.ckks import (
    DEFAULT_PARAMS,
    CkksParams,
    FederationContext,
    load_context,
    new_secret_context,
    public_context_bytes,
    require_public_only,
    require_secret,
    secret_context_bytes,
)
from federation.errors import INSECURE_KEY_FILE, KEY_FILE, FederationError, KeyFileError
from federation.files import write_atomic

log = logging.getLogger(__name__)

SECRET_CONTEXT_NAME = "federation-secret.tenseal"
PUBLIC_CONTEXT_NAME = "federation-public.tenseal"


def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(KEY_FILE, f"{path} already exists; refusing to overwrite a key file")
    return write_atomic(path, data, mode)


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    return _write_atomic(Path(path), data, 0o600, overwrite)


def write_public_file(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` with mode 0644, atomically."""
    return _write_atomic(Path(path), data, 0o644, overwrite)


def check_permissions(path: Path) -> None:
    """Raise KeyFileError(insecure_key_file) if a secret file is readable by group/others."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(
            INSECURE_KEY_FILE,
            f"{path} has mode {mode:04o}: a secret key file must be private; run "
            f"`chmod 600 {path}`",
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(KEY_FILE, f"{what} not found at {path}") from None
    except OSError as exc:
        raise KeyFileError(KEY_FILE, f"cannot read {what} at {path}: {exc.strerror}") from None


def _read_secret(path: Path, what: str) -> bytes:
    data = _read(path, what)
    check_permissions(path)
    return data


# -- CKKS contexts --------------------------------------------------------------------


def save_secret_context(path: Path, ctx: FederationContext, *, overwrite: bool = False) -> Path:
    return write_secret_file(path, secret_context_bytes(ctx), overwrite=overwrite)


def save_public_context(path: Path, ctx: FederationContext, *, overwrite: bool = False) -> Path:
    return write_public_file(path, public_context_bytes(ctx), overwrite=overwrite)


def load_secret_context(path: Path) -> FederationContext:
    """The federation secret context of an edge box (must be 0600 and hold the key)."""
    ctx = _load_ctx(_read_secret(path, "CKKS secret context"), path)
    require_secret(ctx)
    return ctx


def load_public_context(path: Path) -> FederationContext:
    """The aggregator's context; refuses one holding a secret key (secret_key_refused)."""
    ctx = _load_ctx(_read(path, "CKKS public context"), path)
    require_public_only(ctx)
    return ctx


def _load_ctx(data: bytes, path: Path) -> FederationContext:
    try:
        return load_context(data)
    except FederationError as exc:
        raise KeyFileError(exc.reason, f"{path}: {exc.message}") from None


@dataclass(frozen=True)
class FederationKeyFiles:
    secret_context: Path
    public_context: Path
    key_id: str
    params: CkksParams


def create_federation_keys(
    out_dir: Path, params: CkksParams = DEFAULT_PARAMS, *, overwrite: bool = False
) -> FederationKeyFiles:
    """Create a federation's CKKS key pair files in ``out_dir`` (``keys create``).

    The secret context goes to every edge box, the public one to the aggregator; both
    carry the same ``key_id`` (put it in the federation config to catch mixed-up keys).
    """
    out_dir = Path(out_dir)
    secret_path, public_path = out_dir / SECRET_CONTEXT_NAME, out_dir / PUBLIC_CONTEXT_NAME
    if not overwrite:
        for p in (secret_path, public_path):
            if p.exists():
                raise KeyFileError(KEY_FILE, f"{p} already exists; refusing to replace "
                                   "federation keys (every box would lose the federation)")
    ctx = new_secret_context(params)
    save_secret_context(secret_path, ctx, overwrite=overwrite)
    save_public_context(public_path, ctx, overwrite=overwrite)
    log.info("created federation keys %s in %s", ctx.key_id, out_dir)
    return FederationKeyFiles(secret_path, public_path, ctx.key_id, params)


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
    data = _read_secret(path, "Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(KEY_FILE, f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(KEY_FILE, f"{path} holds a {type(key).__name__}, not Ed25519")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "Ed25519 public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(KEY_FILE, f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(KEY_FILE, f"{path} holds a {type(key).__name__}, not Ed25519")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The device/aggregator signing key at ``path``, created (0600) on first use."""
    if Path(path).exists():
        return read_private_key(path)
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key)
    return key
