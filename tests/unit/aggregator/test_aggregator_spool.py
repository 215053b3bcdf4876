"""The aggregator's spool: a one-chunk blob (every update of the default part) goes
straight to its ready file, with the same checks as the general reassembly path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import pytest

from aggregator.intake.spool import DiskReassembler
from federation.chunking import split_blob
from federation.crypto.signing import generate_signing_key
from federation.envelope import Envelope
from federation.errors import INTEGRITY, FederationError

KEY = generate_signing_key()


def _envelopes(blob: bytes, chunk_size: int) -> list[Envelope]:
    return split_blob(blob, KEY, kind="update", fed="fedtest", sender="box0", round=1,
                      model="m0", chunk_size=chunk_size)


def _spool(tmp_path: Path) -> DiskReassembler:
    return DiskReassembler(tmp_path / "spool", max_blob_bytes=1 << 20, max_spool_bytes=1 << 22)


def test_one_chunk_blob_is_written_once_to_a_private_ready_file(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    blob = os.urandom(150_000)
    (env,) = _envelopes(blob, 256 * 1024)
    path = spool.add(env)
    assert path is not None and path.name.endswith(".ready")
    assert path.read_bytes() == blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert spool.partials == {}  # nothing in flight, nothing to expire
    assert [p.name for p in spool.dir.iterdir()] == [path.name]


def test_many_chunk_blob_still_reassembles_to_the_same_bytes(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    blob = os.urandom(150_000)
    envs = _envelopes(blob, 40_000)
    assert len(envs) == 4
    results = [spool.add(e) for e in reversed(envs)]  # out of order: hashed from the file
    assert results[:-1] == [None, None, None]
    done = results[-1]
    assert done is not None and done.read_bytes() == blob


@pytest.mark.parametrize("lie", ["hash", "size"])
def test_one_chunk_blob_that_is_not_its_own_chunk_is_refused_and_leaves_nothing(
    tmp_path: Path, lie: str
) -> None:
    spool = _spool(tmp_path)
    (env,) = _envelopes(os.urandom(150_000), 256 * 1024)
    if lie == "hash":  # the blob's hash is not the one chunk's
        env = dataclasses.replace(env, blob_sha256=hashlib.sha256(b"another").hexdigest())
    else:  # the one chunk is shorter than the blob it claims to be
        env = dataclasses.replace(env, blob_size=env.blob_size + 1)
    with pytest.raises(FederationError) as err:
        spool.add(env)
    assert err.value.reason == INTEGRITY
    assert list(spool.dir.iterdir()) == []
