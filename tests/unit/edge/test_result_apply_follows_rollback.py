"""The federation client federates from what the box serves, also after another process
moved it (`fedface-edge model rollback` while `join` runs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.federated.result_apply import ResultApplier
from tests.support.federation_rig import PART


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
    unused: Any = None
    applier = ResultApplier(unused, unused, PART, sink, unused, unused, version="round-2",
                            vector=round_2, max_relative_change=1.0,
                            verify=lambda *_: None, publish_status=lambda: None,
                            applied=lambda: None)
    base = applier.base_vector("round-2")
    assert base is not None and np.array_equal(base, round_2)
    sink.served = ("round-1", round_1)  # `model rollback` in another process
    assert applier.base_vector("round-2") is None  # round 3, built on round-2: sat out
    base = applier.base_vector("round-1")
    assert base is not None and np.array_equal(base, round_1)
    assert applier.version == "round-1"
