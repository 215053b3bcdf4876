"""The box's plausibility check on a decrypted federated average
(``edge.federated.sealing.check_average``) under differential privacy."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ResultRejected
from edge.federated.sealing import check_average
from federation.crypto.bounds import Bounds, ResultPolicy, allowed_change
from federation.crypto.dp import DpConfig, privatize
from tests.support.federation_rig import PART, part_base_vector


def test_an_honest_local_dp_average_is_not_refused_as_implausible() -> None:
    """The walkthrough's settings (`serve --dp-clip 0.5 --dp-noise 1 --dp-mode local`, 3
    boxes, the default part's real weights): the noise moved the weights by ~63% of their
    norm and every box refused every round ('limit 50%'), then the aggregator marked the
    rounds poisoned. The box's plausibility check now allows the noise the round's DP
    settings add, and still refuses a jump that no such noise explains."""
    base = part_base_vector().astype(np.float64)
    dp = DpConfig(clip_norm=0.5, noise_multiplier=1.0, mode="local")
    rng = np.random.default_rng(7)
    boxes = [privatize((base + rng.normal(0, 0.01, base.size)).astype(np.float32),
                       base.astype(np.float32), dp, quorum=2, rng=rng)[0] for _ in range(3)]
    average = np.mean(boxes, axis=0)
    moved = np.linalg.norm(average - base) / np.linalg.norm(base)
    assert moved > 0.5  # what the fixed limit refused
    pol = ResultPolicy(64.0, Bounds(1000, None), dp, 2)
    with pytest.raises(ResultRejected, match=r"limit 50%\): not a plausible"):
        check_average(average, base, PART, 0.5)  # the check before: no policy
    check_average(average, base, PART, 0.5, pol, n_updates=3)  # passes now
    with pytest.raises(ResultRejected, match=r"plus \d+% for the round's DP noise"):
        check_average(base * 3.0, base, PART, 0.5, pol, n_updates=3)
    # and a DP round without the federation's clip still has the change bound of DP's clip
    limit = allowed_change(pol, 3, 3.0, base.size)
    assert limit is not None and np.linalg.norm(average - base) < limit < np.linalg.norm(
        base * 2.0)
