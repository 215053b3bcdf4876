"""The bench's server optimisers do what their papers define, on hand-computable moves."""

import numpy as np
import pytest

from bench.common.server_opt import ServerOptimiser


def test_fedavg_returns_the_average_itself() -> None:
    opt = ServerOptimiser.parse("avg")
    prev, avg = np.zeros(3, np.float32), np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_array_equal(opt.step(prev, avg), avg)


def test_fedavgm_accumulates_the_rounds_moves() -> None:
    opt = ServerOptimiser.parse("avgm:1:0.5")
    w = np.zeros(2, np.float32)
    w = opt.step(w, w + np.array([1.0, 0.0], np.float32))  # m = 1
    np.testing.assert_allclose(w, [1.0, 0.0])
    w = opt.step(w, w + np.array([1.0, 0.0], np.float32))  # m = 0.5 + 1
    np.testing.assert_allclose(w, [2.5, 0.0])
    w = opt.step(w, w)  # no move this round: momentum alone, m = 0.75
    np.testing.assert_allclose(w, [3.25, 0.0])


def test_fedadam_moves_each_value_by_about_its_rate_whatever_its_scale() -> None:
    opt = ServerOptimiser.parse("adam:0.01:0")  # tau 0: pure sign-like first step
    prev = np.zeros(2, np.float32)
    w = opt.step(prev, np.array([1e-4, -10.0], np.float32))
    # m = 0.1 d, sqrt(v) = 0.1 |d|: the first move is lr in d's direction, per value
    np.testing.assert_allclose(w, [0.01, -0.01], rtol=1e-5)


@pytest.mark.parametrize("spec", ["sgd", "avg:1", "avgm:x"])
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        ServerOptimiser.parse(spec)
