"""CI-sized federated experiment on real LFW faces: federated beats local-only.

Same code as ``bench.federation.federated_accuracy`` on a small identity split (4 institutions of
12 people, 2 camera domains, 80 held-out test people), with the real CKKS path for the
encrypted row. Asserts the claims the product rests on, at a size CI can afford.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.common.fed_data import build_design
from bench.federation.federated_accuracy import run


@pytest.mark.slow
def test_federated_beats_local_only_on_held_out_people(
    shared_data: Path, tmp_path: Path
) -> None:
    design = build_design(
        shared_data / "lfw", seed=0, n_institutions=4, min_people=12, n_pairs=300,
        train_cap=10, max_train_people=48, max_test_people=80, n_cameras=2,
    )
    train_people = {p for inst in design.institutions for p in inst.people}
    assert not train_people & set(design.test_people)
    args = argparse.Namespace(
        data=shared_data, models=None, parts="conv14", rounds=3, epochs=1.0, lr=None,
        views=2, institutions=4, seed=0, workers=2, out=tmp_path, cache=tmp_path / "cache",
    )
    _, results = run(args, design)
    rows = results[0].rows
    fed, plain = rows["federated encrypted"], rows["federated plaintext"]
    local, pretrained = rows["local-only mean"], rows["pretrained"]
    assert fed["mean"] > local["mean"], rows
    assert abs(fed["mean"] - plain["mean"]) <= 0.05 + 1e-9, rows
    assert results[0].enc_vs_plain_max_abs < 1e-3
    assert results[0].bytes_per_round > results[0].size * 4  # real ciphertexts went through
    assert len(results[0].curve) == 3 and np.all(np.isfinite(results[0].curve))
    assert abs(fed["clean"] - pretrained["clean"]) < 2.0
