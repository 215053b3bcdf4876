"""The CKKS parameter policy (federation.crypto.budget): a declared 10,000-box round
through real packing, the aggregator's own sums and regional partial sums stays within
range and precision; ``init`` refuses keys that cannot hold the declared size; the
budget table of docs/protocol.md is what the policy computes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aggregator.cli.main import app
from aggregator.rounds.accumulator import CkksAccumulator
from federation.crypto.budget import BudgetError, FederationSize, budget_for, choose
from federation.crypto.ckks import DEFAULT_PARAMS, new_secret_context
from federation.crypto.packing import (
    EncryptedUpdate,
    decrypt_sums,
    decrypt_within_bounds,
    encrypt_update,
    plain_weighted_average,
)

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()
SIZE = FederationSize(boxes=10_000, regions=10, max_samples=1000, max_value=8.0,
                      precision=1e-5, min_samples=10)
LENGTH = 40


@pytest.mark.slow  # 10,000 real encryptions: about 20 s of CPU
def test_a_10000_box_round_through_regions_stays_in_range_and_precision() -> None:
    budget = choose(SIZE)
    secret = new_secret_context(budget.params)
    public = secret.public()
    rng = np.random.default_rng(19)
    # half the boxes at the sample cap, the rest anywhere down to the declared minimum;
    # slot 0 at +max_value and slot 1 at -max_value in every box: the largest sums the
    # declared size allows (with the count slot), the others anywhere in the bound
    counts = np.where(np.arange(SIZE.boxes) % 2 == 0, SIZE.max_samples,
                      rng.integers(SIZE.min_samples, SIZE.max_samples + 1, SIZE.boxes))
    per_region = SIZE.boxes // SIZE.regions
    region_blobs, vectors = [], []
    for region in range(SIZE.regions):
        acc = CkksAccumulator(public, LENGTH)  # the (regional) aggregator's own sum
        for n in counts[region * per_region : (region + 1) * per_region]:
            w = rng.uniform(-SIZE.max_value, SIZE.max_value, LENGTH).astype(np.float32)
            w[0], w[1] = SIZE.max_value, -SIZE.max_value
            vectors.append(w)
            acc.add_blob(encrypt_update(secret, w, int(n), budget.count_scale).to_bytes())
        region_blobs.append(acc.to_bytes())
    top = CkksAccumulator(public, LENGTH)
    for blob in region_blobs:  # the top aggregator adds the regions' partial sums
        top.add_blob(blob)
    assert top.count == SIZE.boxes
    summed = EncryptedUpdate.from_bytes(top.to_bytes(), secret)
    weighted, count = decrypt_sums(secret, summed)
    expected_count = counts.sum() / budget.count_scale
    # no wrap-around: the count and the largest slot decode, within the budget's noise
    # of a summed slot (a fixed 1e-3 here was below that bound: 1.1e-3 failed one run)
    assert abs(count - expected_count) <= budget.sum_noise
    assert abs(weighted[0] - SIZE.max_value * expected_count) <= budget.sum_noise
    assert weighted[0] < budget.params.value_bound / 2  # the range headroom held
    average = decrypt_within_bounds(secret, summed, None, None)
    error = float(np.max(np.abs(average - plain_weighted_average(vectors, counts))))
    # float32 output: allow its rounding (8 * 2^-24) on top of the budget's CKKS error
    assert error <= budget.worst_error + 8 * 2.0**-23
    assert budget.worst_error <= SIZE.precision
    # the default set cannot hold this size: the policy is what makes it fit
    with pytest.raises(BudgetError):
        budget_for(DEFAULT_PARAMS, SIZE)


def test_init_refuses_keys_that_cannot_hold_the_declared_size(tmp_path: Path) -> None:
    size_args = ["--boxes", "10000", "--regions", "10"]
    small = tmp_path / "small"
    assert runner.invoke(app, ["keys", "create", "--out", str(small)]).exit_code == 0
    refused = runner.invoke(app, ["init", "--fed", "f1", "--state", str(tmp_path / "s1"),
                                  "--public-context", str(small / "federation-public.tenseal"),
                                  *size_args])
    assert refused.exit_code == 2, refused.output
    assert "cannot hold 10000 boxes" in refused.stderr and "keys create" in refused.stderr
    assert not (tmp_path / "s1" / "config.json").exists()
    sized = tmp_path / "sized"
    made = runner.invoke(app, ["keys", "create", "--out", str(sized), *size_args])
    assert made.exit_code == 0, made.output
    ok = runner.invoke(app, ["init", "--fed", "f1", "--state", str(tmp_path / "s2"),
                             "--public-context", str(sized / "federation-public.tenseal"),
                             *size_args])
    assert ok.exit_code == 0, ok.output
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    budget = choose(SIZE)
    assert config["budget"]["params"] == budget.params.to_dict()
    assert config["budget"]["size"]["boxes"] == 10_000
    assert config["count_scale"] == budget.count_scale
    # serve keeps to the recorded cap: more samples per box (or none) could leave the range
    for cap in ("5000", "0"):
        over = runner.invoke(app, ["serve", "--state", str(tmp_path / "s2"),
                                   "--max-samples", cap])
        assert over.exit_code == 2 and "exceeds the 1000 samples per box" in over.stderr


def test_the_protocol_docs_budget_table_is_the_policy() -> None:
    text = (REPO / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| ([\d,]+) boxes \| (.+) \|$", text, re.MULTILINE)
    assert [r[0] for r in rows] == ["10", "1,000", "10,000"]
    for boxes, cells in rows:
        b = choose(FederationSize(int(boxes.replace(",", "")), max(1, int(
            boxes.replace(",", "")) // 1000), 1000, 8.0, 1e-5, 10))
        p = b.params
        expected = (f"{list(p.coeff_mod_bit_sizes)} 2^{p.global_scale_bits} | "
                    f"{b.count_scale:g} | {b.range_bits:.1f} | {b.precision_bits:.1f} "
                    f"({b.worst_error:.1e}) | {b.bytes_per_value:.2f}")
        assert cells == expected, boxes
