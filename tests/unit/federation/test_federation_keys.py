"""Key files: 0600 secrets written atomically, permission checks, wrong-kind refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from federation.crypto.keys import (
    check_permissions,
    create_federation_keys,
    load_or_create_private_key,
    load_public_context,
    load_secret_context,
    read_private_key,
    read_public_key,
    write_public_key,
    write_secret_file,
)
from federation.crypto.packing import StreamingSum, decrypt_average, encrypt_update
from federation.crypto.signing import public_key_hex
from federation.errors import FederationError, KeyFileError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_federation_keys_files_and_modes(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even with a permissive umask the secret stays private
    try:
        files = create_federation_keys(tmp_path / "fed")
    finally:
        os.umask(old)
    assert mode(files.secret_context) == 0o600
    assert mode(files.public_context) == 0o644
    assert not list((tmp_path / "fed").glob(".*.tmp"))
    secret = load_secret_context(files.secret_context)
    public = load_public_context(files.public_context)
    assert secret.key_id == public.key_id == files.key_id
    # The pair works end to end through the files.
    w = np.linspace(-1, 1, 3000, dtype=np.float32)
    s = StreamingSum(public, 3000)
    s.add(encrypt_update(secret, w, 400))
    assert np.max(np.abs(decrypt_average(secret, s.result()) - w)) < 1e-5
    with pytest.raises(KeyFileError) as exc:
        create_federation_keys(tmp_path / "fed")
    assert exc.value.reason == "key_file"


def test_aggregator_refuses_secret_context_and_box_refuses_public(tmp_path: Path) -> None:
    files = create_federation_keys(tmp_path)
    with pytest.raises(FederationError) as exc:
        load_public_context(files.secret_context)
    assert exc.value.reason == "secret_key_refused"
    os.chmod(files.public_context, 0o600)
    with pytest.raises(FederationError) as exc:
        load_secret_context(files.public_context)
    assert exc.value.reason == "public_key_cannot_decrypt"


def test_world_readable_secret_is_flagged(tmp_path: Path) -> None:
    files = create_federation_keys(tmp_path)
    os.chmod(files.secret_context, 0o644)
    with pytest.raises(KeyFileError) as exc:
        load_secret_context(files.secret_context)
    assert exc.value.reason == "insecure_key_file" and "chmod 600" in exc.value.message
    os.chmod(files.secret_context, 0o600)
    check_permissions(files.secret_context)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as exc:
        load_public_context(tmp_path / "nope.tenseal")
    assert "not found" in exc.value.message
    bad = write_secret_file(tmp_path / "bad.tenseal", b"FFK1garbage")
    with pytest.raises(KeyFileError) as exc:
        load_secret_context(bad)
    assert exc.value.reason == "malformed"


def test_ed25519_key_files(tmp_path: Path) -> None:
    key = load_or_create_private_key(tmp_path / "device.key")
    assert mode(tmp_path / "device.key") == 0o600
    assert public_key_hex(read_private_key(tmp_path / "device.key")) == public_key_hex(key)
    assert load_or_create_private_key(tmp_path / "device.key") is not None
    write_public_key(tmp_path / "device.pub", key.public_key())
    assert public_key_hex(read_public_key(tmp_path / "device.pub")) == public_key_hex(key)
    with pytest.raises(KeyFileError):
        read_private_key(tmp_path / "device.pub")
    os.chmod(tmp_path / "device.key", 0o640)
    with pytest.raises(KeyFileError) as exc:
        read_private_key(tmp_path / "device.key")
    assert exc.value.reason == "insecure_key_file"
