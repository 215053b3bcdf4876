"""Key and context files: written atomically, secrets never readable by others.

Secret files (the CKKS secret context, Ed25519 private keys) are created with
``os.open(O_CREAT | O_EXCL, 0o600)`` under a temporary name in the target directory and
renamed into place, so they are never world-readable, not even for an instant, and a
crash never leaves a half-written key. Public files are 0644.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.crypto.ckks import (
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
from federation.crypto.key_files import (  # the Ed25519 and file half, re-exported
    check_permissions,
    load_or_create_private_key,
    read_key_file,
    read_private_key,
    read_public_key,
    read_secret_file,
    write_private_key,
    write_public_file,
    write_public_key,
    write_secret_file,
)
from federation.errors import KEY_FILE, FederationError, KeyFileError
from federation.files import PRIVATE_DIR, make_dirs

__all__ = [
    "KEYHOLDER_KEY_NAME",
    "KEYHOLDER_PUB_NAME",
    "PUBLIC_CONTEXT_NAME",
    "SECRET_CONTEXT_NAME",
    "FederationKeyFiles",
    "check_permissions",
    "create_federation_keys",
    "load_or_create_keyholder_key",
    "load_or_create_private_key",
    "load_public_context",
    "load_secret_context",
    "read_private_key",
    "read_public_key",
    "save_public_context",
    "save_secret_context",
    "write_private_key",
    "write_public_file",
    "write_public_key",
    "write_secret_file",
]

log = logging.getLogger(__name__)

SECRET_CONTEXT_NAME = "federation-secret.tenseal"
PUBLIC_CONTEXT_NAME = "federation-public.tenseal"
# The key holder's Ed25519 key: signs each key epoch sealed to a box
# (federation.crypto.epochs); its public half goes to every box in the key bundle.
KEYHOLDER_KEY_NAME = "keyholder.key"
KEYHOLDER_PUB_NAME = "keyholder.pub"


# -- CKKS contexts --------------------------------------------------------------------


def save_secret_context(path: Path, ctx: FederationContext, *, overwrite: bool = False) -> Path:
    return write_secret_file(path, secret_context_bytes(ctx), overwrite=overwrite)


def save_public_context(path: Path, ctx: FederationContext, *, overwrite: bool = False) -> Path:
    return write_public_file(path, public_context_bytes(ctx), overwrite=overwrite)


def load_secret_context(path: Path) -> FederationContext:
    """The federation secret context of an edge box (must be 0600 and hold the key)."""
    ctx = _load_ctx(read_secret_file(path, "CKKS secret context"), path)
    require_secret(ctx)
    return ctx


def load_public_context(path: Path) -> FederationContext:
    """The aggregator's context; refuses one holding a secret key (secret_key_refused)."""
    ctx = _load_ctx(read_key_file(path, "CKKS public context"), path)
    require_public_only(ctx)
    return ctx


def _load_ctx(data: bytes, path: Path) -> FederationContext:
    try:
        return load_context(data)
    except FederationError as exc:
        raise KeyFileError(exc.reason, f"{path}: {exc.message}") from None


def load_or_create_keyholder_key(keys_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key holder's signing key in ``keys_dir`` (created, 0600 + 0644 .pub, if missing)."""
    path = Path(keys_dir) / KEYHOLDER_KEY_NAME
    created = not path.exists()
    key = load_or_create_private_key(path)
    if created or not (Path(keys_dir) / KEYHOLDER_PUB_NAME).exists():
        write_public_key(Path(keys_dir) / KEYHOLDER_PUB_NAME, key.public_key(), overwrite=True)
    return key, created


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
    make_dirs(out_dir, PRIVATE_DIR)  # the secret context's directory: whatever the umask
    ctx = new_secret_context(params)
    save_secret_context(secret_path, ctx, overwrite=overwrite)
    save_public_context(public_path, ctx, overwrite=overwrite)
    # the key holder's signing key: boxes trust a later key epoch only if it signed it
    load_or_create_keyholder_key(out_dir)
    log.info("created federation keys %s in %s", ctx.key_id, out_dir)
    return FederationKeyFiles(secret_path, public_path, ctx.key_id, params)
