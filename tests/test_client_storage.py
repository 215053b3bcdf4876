"""The edge client's on-disk state: outbox of sealed updates, federated model store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.model_store import FederatedModelStore, ModelStoreError
from edge.outbox import Outbox


def test_outbox_round_trip_mode_and_cleanup(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    chunks = [b"\x00" * 10, b"chunk-two", b""]
    box.put(3, "round-2", "ab12cd34", chunks)
    box.put(4, "round-3", "ef56ab78", [b"x"])
    (item3, item4) = box.pending()
    assert item4.chunks == (b"x",)
    assert (item3.round_no, item3.model_version, item3.msg_id) == (3, "round-2", "ab12cd34")
    assert item3.chunks == tuple(chunks)
    assert item3.path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700
    assert not list((tmp_path / "outbox").glob(".*.tmp"))  # no leftovers of the rename
    assert box.stored() == [(3, "ab12cd34"), (4, "ef56ab78")]
    assert box.remove_rounds_before(4) == ["ab12cd34"]
    assert [p.round_no for p in box.pending()] == [4]
    assert box.remove(4, "ef56ab78") and not box.remove(4, "ef56ab78")
    assert box.pending() == []


def test_outbox_moves_a_corrupt_file_aside(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    good = box.put(1, "base", "aa11", [b"payload" * 100])
    truncated = tmp_path / "r00000002-bb22.upd"
    truncated.write_bytes(good.path.read_bytes()[:-5])
    pending = box.pending()
    assert [p.msg_id for p in pending] == ["aa11"]
    assert (tmp_path / "r00000002-bb22.bad").exists()  # kept for inspection, not deleted


def test_outbox_refuses_a_path_like_message_id(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="alphanumeric"):
        Outbox(tmp_path).put(1, "base", "../x", [b"x"])


def test_model_store_keeps_current_and_previous(tmp_path: Path) -> None:
    store = FederatedModelStore(tmp_path)
    assert store.load_current() is None
    vecs = {f"round-{i}": np.full(7, i, np.float32) for i in (1, 2, 3)}
    for i, (version, vec) in enumerate(vecs.items(), start=1):
        store.save(version, i, vec)
    current = store.load_current()
    assert current is not None and current.version == "round-3" and current.round_no == 3
    np.testing.assert_array_equal(current.vector, vecs["round-3"])
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["round-2.npy", "round-3.npy"]


def test_model_store_detects_a_tampered_file(tmp_path: Path) -> None:
    store = FederatedModelStore(tmp_path)
    store.save("round-1", 1, np.arange(5, dtype=np.float32))
    path = tmp_path / "round-1.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="SHA-256"):
        store.load_current()
    with pytest.raises(ModelStoreError, match="safe file name"):
        store.save("../evil", 2, np.zeros(5, np.float32))
