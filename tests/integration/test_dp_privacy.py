"""Differential privacy: the accountant against the tight Gaussian bound, clipping and
noise statistics, and the whole path (announced by the aggregator, applied by real
FederationClients before encryption, budget in the ledger and the retained status)."""

from __future__ import annotations

import itertools
import json
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from edge.federated.client import ClientEvent
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.bounds import Bounds
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.dp import (
    DpConfig,
    PrivacyLedger,
    clip_delta,
    epsilon,
    gaussian_epsilon_exact,
    noise_multiplier_for,
    privatize,
)
from federation.envelope import decode
from federation.errors import FederationError
from tests.support.aggregator_rig import in_memory_federation
from tests.support.federation_rig import PART, RecordingSink, part_base_vector, wait_for

FED = "dpfed"


@pytest.mark.parametrize("mode", ["local", "distributed"])
@pytest.mark.parametrize("z", [0.8, 2.0, 6.0])
@pytest.mark.parametrize("rounds", [1, 10])
def test_rdp_epsilon_bounds_the_tight_gaussian_epsilon(mode: str, z: float, rounds: int) -> None:
    dp = DpConfig(1.0, z, 1e-5, mode)
    rdp, exact = epsilon(dp, rounds), gaussian_epsilon_exact(dp, rounds)
    assert exact <= rdp <= 1.25 * exact + 0.05, (rdp, exact)


def test_accountant_composition_and_inversion() -> None:
    dp = DpConfig(1.0, 3.0, 1e-5, "local")
    eps = [epsilon(dp, t) for t in range(1, 8)]
    assert all(a < b for a, b in itertools.pairwise(eps))
    ledger = PrivacyLedger([])
    for r in range(1, 6):
        ledger.spend(r, dp)
    ledger.spend(5, dp)  # the same round twice is spent once
    assert ledger.total_epsilon() == pytest.approx(epsilon(dp, 5))
    assert PrivacyLedger.from_json(ledger.to_json()).total_epsilon() == ledger.total_epsilon()
    # local DP (sensitivity 2C) needs twice the noise of distributed for the same epsilon
    z_local = noise_multiplier_for(2.0, 6, 1e-5, "local")
    z_dist = noise_multiplier_for(2.0, 6, 1e-5, "distributed")
    assert z_local == pytest.approx(2 * z_dist, rel=0.01)
    assert epsilon(DpConfig(1.0, z_local, 1e-5, "local"), 6) <= 2.0


def test_bad_dp_settings_are_refused_with_a_reason() -> None:
    for bad in ({"clip_norm": 1.0}, {"clip_norm": -1, "noise_multiplier": 1, "delta": 1e-5,
                                     "mode": "local"},
                {"clip_norm": 1, "noise_multiplier": 1, "delta": 2, "mode": "local"},
                {"clip_norm": 1, "noise_multiplier": True, "delta": 1e-5, "mode": "local"},
                {"clip_norm": 1, "noise_multiplier": 1, "delta": 1e-5, "mode": "central"}):
        with pytest.raises(FederationError) as info:
            DpConfig.from_dict(bad)
        assert info.value.reason == "malformed"


def test_clipping_and_noise_have_the_stated_sizes() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 20_000).astype(np.float32)
    big = base + rng.normal(0, 1, base.size).astype(np.float32)  # delta norm ~141
    clipped, norm = clip_delta(big - base, 2.0)
    assert norm > 100 and np.linalg.norm(clipped) == pytest.approx(2.0)
    small = base + 1e-4
    assert np.allclose(clip_delta(small - base, 2.0)[0], small - base)
    dp = DpConfig(2.0, 1.5, 1e-5, "local")
    out, _ = privatize(big, base, dp, quorum=4, rng=np.random.default_rng(1))
    noise = out.astype(np.float64) - base - clipped
    assert np.std(noise) == pytest.approx(1.5 * 2.0, rel=0.03)
    # distributed: each box adds 1/quorum of the variance, so a sum of quorum boxes has zC
    dist = DpConfig(2.0, 1.5, 1e-5, "distributed")
    shares = [privatize(base, base, dist, quorum=4, rng=np.random.default_rng(10 + i))[0]
              for i in range(4)]
    summed_noise = sum(s.astype(np.float64) - base for s in shares)
    assert np.std(summed_noise) == pytest.approx(1.5 * 2.0, rel=0.03)


def test_boxes_apply_the_announced_dp_and_report_their_budget(
    tmp_path: Path,
) -> None:
    ctx: FederationContext = new_secret_context()
    devices, counts = ["a", "b", "c"], [40, 90, 400]
    base = part_base_vector()
    clean = [NumpyDriftTrainer(PART, base, d, n, 1e-2).local_update(None, 1).vector
             for d, n in zip(devices, counts, strict=True)]
    norms = [float(np.linalg.norm(v - base)) for v in clean]
    clip = 0.5 * float(np.median(norms))  # clipping active for every box
    dp = DpConfig(clip, 1.0, 1e-5, "local")
    fed = in_memory_federation(tmp_path / "agg", ctx, FED, devices,
                               RoundSettings(60, 3, 64, PART.key, dp=dp), max_rounds=2)
    bus = fed.bus
    clients, sinks = [], []
    events: list[ClientEvent] = []
    for d, n in zip(devices, counts, strict=True):
        sink = RecordingSink()
        clients.append(fed.client(d, NumpyDriftTrainer(PART, base, d, n, 1e-2), sink,
                                  tmp_path / d, base, events.append))
        sinks.append(sink)
    with closing(fed.store), fed.serving():  # the store closes after the service stops
        try:
            for c in clients:
                c.start()
            wait_for(lambda: all(len(s.applied) >= 2 for s in sinks), 60, "two DP rounds applied")
            # round 1: equal weights, clipped deltas, local noise of std z*C per box
            first = sinks[0].applied[0][1].astype(np.float64)
            expected = base + np.mean([clip_delta(v - base, clip)[0] for v in clean], axis=0)
            residual = first - expected
            assert np.std(residual) == pytest.approx(dp.box_noise_std(3) / np.sqrt(3), rel=0.1)
            assert abs(float(np.mean(residual))) < 4 * np.std(residual) / np.sqrt(residual.size)
            for c in clients:
                report = c.privacy_report()
                assert report is not None and report["rounds"] == 2
                assert report["epsilon_total"] == pytest.approx(epsilon(dp, 2))
                ledger = json.loads(c.ledger_path.read_text())
                assert [e["round"] for e in ledger] == [1, 2]
            submitted = [e for e in events if e.kind == "submitted"]
            assert all(e.data["dp"]["epsilon_total"] > 0 for e in submitted)
            wait_for(lambda: "dp" in json.loads(decode(bus.retained[topics.status(FED, "a")])
                                                 .payload), 10, "dp in the retained status")
            status = json.loads(decode(bus.retained[topics.status(FED, "a")]).payload)
            assert status["dp"]["epsilon_total"] == pytest.approx(epsilon(dp, 2))
            ann = json.loads(decode(bus.retained[topics.announce(FED)]).payload)
            assert DpConfig.from_dict(ann["dp"]) == dp
        finally:
            for c in clients:
                c.stop()


def test_honest_local_dp_rounds_are_applied_not_refused_as_implausible(
    tmp_path: Path,
) -> None:
    """The walkthrough's settings through the real path (CKKS, the aggregator, three
    clients): local mode, clip 0.5, noise multiplier 1, the default part's real weights.
    The averaged noise moves the weights by more than half their norm; every box refused
    every such round before (`out_of_range`), and serve then marked it poisoned."""
    ctx: FederationContext = new_secret_context()
    devices = ["a", "b", "c"]
    base = part_base_vector()
    dp = DpConfig(0.5, 1.0, 1e-5, "local")
    fed = in_memory_federation(tmp_path / "agg", ctx, FED, devices,  # serve's default cap
                               RoundSettings(60, 3, 64, PART.key, dp=dp, bounds=Bounds(1000)),
                               max_rounds=1)
    clients, sinks = [], []
    events: list[ClientEvent] = []
    for d in devices:
        sink = RecordingSink()
        clients.append(fed.client(d, NumpyDriftTrainer(PART, base, d, 50, 1e-2), sink,
                                  tmp_path / d, base, events.append))
        sinks.append(sink)
    with closing(fed.store), fed.serving():
        try:
            for c in clients:
                c.start()
            wait_for(lambda: all(s.applied for s in sinks), 60, "the DP round applied")
            moved = np.linalg.norm(sinks[0].applied[0][1] - base) / np.linalg.norm(base)
            assert moved > 0.5  # over the fixed limit that refused it
            assert not [e for e in events if e.kind == "result_rejected"]
        finally:
            for c in clients:
                c.stop()
