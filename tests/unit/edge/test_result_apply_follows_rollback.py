"""The federation client federates from what the box serves, also after another process
moved it (`fedface-edge model rollback` while `join` runs)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from edge.federated.result_apply import ResultApplier
from tests.support.federation_rig import PART


def _applier(sink: Any, version: str, vector: np.ndarray) -> ResultApplier:
    """The applier with only what following the sink needs (no results come here)."""
    unused: Any = None
    return ResultApplier(unused, unused, PART, sink, unused, unused, version=version,
                         vector=vector, max_relative_change=1.0, verify=lambda *_: None,
                         publish_status=lambda: None, applied=lambda: None)


class ServingSink:
    """Stands in for the hot swapper: what it serves, as its served_vector() says."""

    def __init__(self, version: str, vector: np.ndarray) -> None:
        self.served = (version, vector)

    def served_vector(self) -> tuple[str, np.ndarray]:
        return self.served


def test_a_rollback_by_another_process_is_what_the_next_round_trains_from() -> None:
    rng = np.random.default_rng(0)
    round_1, round_2 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = ServingSink("round-2", round_2)
    applier = _applier(sink, "round-2", round_2)
    base = applier.base_vector("round-2")
    assert base is not None and np.array_equal(base, round_2)
    sink.served = ("round-1", round_1)  # `model rollback` in another process
    assert applier.base_vector("round-2") is None  # round 3, built on round-2: sat out
    base = applier.base_vector("round-1")
    assert base is not None and np.array_equal(base, round_1)
    assert applier.version == "round-1"


class HotSwapperLike:
    """What the hot swapper shows: ``served`` (its ServedModel: a version) and the vector."""

    def __init__(self, version: str, vector: np.ndarray) -> None:
        self.set(version, vector)
        self.vector_reads = 0

    def set(self, version: str, vector: np.ndarray) -> None:
        self.served, self._vector = SimpleNamespace(version=version), vector

    def served_vector(self) -> tuple[str, np.ndarray]:
        self.vector_reads += 1
        return self.served.version, self._vector


def test_the_status_follows_a_rollback_between_rounds() -> None:
    """The worker's tick: the box's status names the rolled-back model at once (the
    operator's MODEL column kept the version rolled back from until the next round),
    and the vector is read only when the served version's name changed."""
    rng = np.random.default_rng(1)
    round_1, round_2 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = HotSwapperLike("round-2", round_2)
    applier = _applier(sink, "round-2", round_2)
    assert applier.follow_served() is False and sink.vector_reads == 0  # nothing moved
    sink.set("round-1", round_1)  # `model rollback` in another process
    assert applier.follow_served() is True
    assert applier.version == "round-1" and np.array_equal(applier.vector, round_1)
    assert applier.follow_served() is False and sink.vector_reads == 1


def test_a_served_model_it_cannot_federate_from_is_read_once() -> None:
    """The pretrained model, or a version of another part, has no vector to federate
    from: the tick does not read (nor warn about) it again every half second."""
    rng = np.random.default_rng(2)
    round_2 = rng.normal(size=PART.size).astype(np.float32)

    class OtherPart(HotSwapperLike):
        def served_vector(self) -> None:  # type: ignore[override]
            self.vector_reads += 1
            return None

    sink = OtherPart("round-7-conv14", round_2)
    applier = _applier(sink, "round-2", round_2)
    for _ in range(5):
        assert applier.follow_served() is False
    assert sink.vector_reads == 1 and applier.version == "round-2"
