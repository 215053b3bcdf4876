"""An aggregator upgraded from update format 1 (TenSEAL's serialisation, before bit-packing)
while a round was open keeps that round's accepted updates: its stored blobs are re-encoded
losslessly on start and the rebuilt sum is the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from aggregator.state.db import StoreError
from aggregator.state.upgrade import FORMAT_MARK
from federation.crypto import wire
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import (
    LEGACY_UPDATE_VERSION,
    UPDATE_VERSION,
    encrypt_update,
    parse_layout,
    plain_weighted_average,
    update_version,
    upgrade_legacy_update,
    wire_widths,
)
from tests.support.aggregator_boxes import collect_result, decrypt_result, latest_announce
from tests.support.aggregator_rig import COUNT_SCALE, FED, make_rig

LENGTH = 2500


def as_format_1(blob: bytes, ctx: FederationContext) -> bytes:
    """What a release before bit-packing stored: the same ciphertexts, each as TenSEAL
    serialises it (SEAL bytes, zstd-compressed), behind the same header marked version 1."""
    widths = wire_widths(ctx)
    header_size = parse_layout(blob).spans[0][0] - 4
    cts = [ts.ckks_vector_from(ctx.context, wire.unpack(blob[a:b], widths)).serialize()
           for a, b in parse_layout(blob).spans]
    header = bytearray(blob[:header_size])
    header[4:6] = LEGACY_UPDATE_VERSION.to_bytes(2, "big")
    return bytes(header) + b"".join(len(ct).to_bytes(4, "big") + ct for ct in cts)


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, LENGTH).astype(np.float32)


def test_a_format_1_update_re_encodes_to_the_same_ciphertexts(
        secret_ctx: FederationContext) -> None:
    current = encrypt_update(secret_ctx, _vec(1), 40, COUNT_SCALE).to_bytes()
    old = as_format_1(current, secret_ctx)
    assert update_version(old) == LEGACY_UPDATE_VERSION and len(old) > len(current)
    upgraded = upgrade_legacy_update(old, wire_widths(secret_ctx))
    assert update_version(upgraded) == UPDATE_VERSION
    assert upgraded == current  # lossless: bit for bit what this release would have sent
    assert update_version(b"not an update") is None


def test_restart_on_a_format_1_state_dir_keeps_the_accepted_updates(
        tmp_path: Path, secret_ctx: FederationContext) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    vecs, counts = [_vec(10 + i) for i in range(3)], [120, 80, 260]
    for box, vec, n in zip(rig.boxes[:2], vecs[:2], counts[:2], strict=True):
        ann = latest_announce(rig.bus.retained, FED)
        box.send(box.envelopes(box.encrypted_blob(vec, n, COUNT_SCALE), ann["round"],
                               ann["base_model"]))
        rig.service.pump()
        assert box.acks[-1]["accepted"]
    rig.service.transport.close()  # "crash", then the state dir as the old release left it
    stored = [rig.store.accepted_path(name) for _, name in rig.store.accepted_blobs(1)]
    assert len(stored) == 2
    for path in stored:
        path.write_bytes(as_format_1(path.read_bytes(), secret_ctx))
    assert rig.store.get_meta(FORMAT_MARK) == str(UPDATE_VERSION)  # set by the first start
    rig.store.db.execute("DELETE FROM meta WHERE key=?", (FORMAT_MARK,))  # never by the old

    service = rig.reopen(rig.service.settings, secret_ctx.public())

    assert [update_version(p.read_bytes()) for p in stored] == [UPDATE_VERSION] * 2
    assert rig.store.get_meta(FORMAT_MARK) == str(UPDATE_VERSION)  # later starts skip it
    assert service.coordinator.current is not None
    assert service.coordinator.current.contributions == 2
    box = rig.boxes[2]
    ann = latest_announce(rig.bus.retained, FED)
    box.send(box.envelopes(box.encrypted_blob(vecs[2], counts[2], COUNT_SCALE), ann["round"],
                           ann["base_model"]))
    service.pump()
    assert box.acks[-1]["accepted"]
    _, blob = collect_result(rig.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    rig.store.close()


def test_a_blob_that_does_not_re_encode_is_looked_at_again_next_start(
        tmp_path: Path, secret_ctx: FederationContext) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=1)
    box = rig.boxes[0]
    ann = latest_announce(rig.bus.retained, FED)
    box.send(box.envelopes(box.encrypted_blob(_vec(3), 50, COUNT_SCALE), ann["round"],
                           ann["base_model"]))
    rig.service.pump()
    assert box.acks[-1]["accepted"]
    rig.service.transport.close()
    [(_, name)] = rig.store.accepted_blobs(1)
    path = rig.store.accepted_path(name)
    old = as_format_1(path.read_bytes(), secret_ctx)
    path.write_bytes(old[:len(old) // 2])  # cut short: it cannot be re-encoded
    rig.store.db.execute("DELETE FROM meta WHERE key=?", (FORMAT_MARK,))

    with pytest.raises(StoreError, match="cannot be re-added"):  # said, not lost
        rig.reopen(rig.service.settings, secret_ctx.public())

    assert update_version(path.read_bytes()) == LEGACY_UPDATE_VERSION  # left as it was
    assert rig.store.get_meta(FORMAT_MARK) is None
    rig.store.close()
