"""The box's on-disk federation state: outbox of sealed updates, model versions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.federated.outbox import Outbox
from edge.serving.versions import (
    ModelStoreError,
    Pointer,
    ServedModel,
    SwapStore,
    check_version,
)
from federation.messages import result_round


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


def test_a_weights_file_keeps_the_part_vector_it_was_made_from(tmp_path: Path) -> None:
    """The box's one store of model versions (edge.serving.versions) keeps each version's part
    vector: what the federation client resumes on after a restart."""
    store = SwapStore(tmp_path, create=True)
    vector = np.arange(7, dtype=np.float32)
    sha = store.write_weights("sface-fed-round-3.weights.npz",
                              {"w": np.ones((2, 2), np.float32)}, "base-sha", vector)
    served = ServedModel("round-3", "sface-fed-round-3", "sface-fed-round-3.weights.npz", sha,
                         0.0, "federated result", "embed_bn")
    store.commit(Pointer(served, None))
    got = store.read_vector(served)
    assert got is not None
    np.testing.assert_array_equal(got, vector)
    weights, base_sha = store.read_weights(served)
    assert set(weights) == {"w"} and base_sha == "base-sha"  # the vector is not a weight
    assert (tmp_path / served.model_file).stat().st_mode & 0o777 == 0o600
    assert result_round("round-3") == 3 and result_round("local-2026") is None
    older = store.write_weights("sface-fed-round-1.weights.npz", {"w": np.ones(1)}, "base-sha")
    assert store.read_vector(replace(served, model_file="sface-fed-round-1.weights.npz",
                                      sha256=older)) is None  # written without a vector


def test_the_store_detects_a_tampered_file_and_refuses_unsafe_names(tmp_path: Path) -> None:
    store = SwapStore(tmp_path, create=True)
    name = "sface-fed-round-1.weights.npz"
    sha = store.write_weights(name, {"w": np.ones(3, np.float32)}, "b", np.zeros(5))
    served = ServedModel("round-1", "t", name, sha, 0.0, "r", "embed_bn")
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="SHA-256"):
        store.read_vector(served)
    with pytest.raises(ModelStoreError, match="safe file name"):
        check_version("../evil")
