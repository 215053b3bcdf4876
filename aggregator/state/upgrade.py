"""Encrypted blobs a release before bit-packing stored, re-encoded when the service starts.

Update format version 1 (each ciphertext as TenSEAL serialised it) is refused on the wire:
a box and the aggregator must speak the same format. But an aggregator upgraded while a
round was open holds that round's accepted updates, and the result blobs of rounds it
published, in version 1 on disk; the round's sum is rebuilt from them on start and the
latest result is republished. Without this step the rebuild would refuse them and fail
the round as damaged, losing updates the boxes were told were accepted. The re-encoding
is lossless (``federation.crypto.packing.upgrade_legacy_update``: the same ciphertexts,
bit-packed) and each file is replaced atomically, so a crash in the middle leaves every
file either old or new, and the next start finishes the job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aggregator.state.store import Store
from federation.crypto.packing import (
    LEGACY_UPDATE_VERSION,
    UPDATE_VERSION,
    update_version,
    upgrade_legacy_update,
)
from federation.errors import FederationError
from federation.files import write_atomic

log = logging.getLogger(__name__)


# set in ``meta`` once no stored blob is in an older format: later starts skip the scan
# (this release only ever writes the current format; an older release never sets it)
FORMAT_MARK = "stored_update_format"


def stored_encrypted_blobs(store: Store) -> list[Path]:
    """Result blobs of every round and accepted updates of the rounds still open/closing."""
    paths = [store.blob_path(name) for name in sorted(store.result_blob_names())]
    for round_no in store.live_rounds():
        paths += [store.accepted_path(name) for _, name in store.accepted_blobs(round_no)]
    return [p for p in paths if p.is_file()]


def upgrade_stored_blobs(store: Store, widths: tuple[int, ...]) -> int:
    """Re-encode every version-1 blob of the state directory; how many were. A blob that
    does not re-encode is left as it was and logged (the rebuild then says what it is),
    and the next start looks again; once none is left, later starts skip the scan."""
    if store.get_meta(FORMAT_MARK) == str(UPDATE_VERSION):
        return 0
    upgraded = failed = 0
    for path in stored_encrypted_blobs(store):
        with path.open("rb") as f:
            if update_version(f.read(6)) != LEGACY_UPDATE_VERSION:
                continue
        try:
            data = upgrade_legacy_update(path.read_bytes(), widths)
        except FederationError as exc:
            log.error("cannot upgrade %s from update format 1: %s", path.name, exc.message)
            failed += 1
            continue
        write_atomic(path, data, mode=os.stat(path).st_mode & 0o777)
        upgraded += 1
    if upgraded:
        log.info("upgraded %d stored encrypted blob(s) from update format 1 (bit-packed now)",
                 upgraded)
    if not failed:
        store.set_meta(FORMAT_MARK, str(UPDATE_VERSION))
    return upgraded
