"""The realistic design's builder (bench.common.realistic_design): deterministic, sizes
within bounds, sites disjoint, test people never in a site, 1:N data consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.common.realistic_design import build_realistic, site_sizes


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake LFW listing (the builder reads names only): 900 people with 1-8 photos."""
    root = tmp_path_factory.mktemp("lfw")
    rng = np.random.default_rng(5)
    for i in range(900):
        person = root / f"Person_{i:04d}"
        person.mkdir()
        for j in range(int(rng.choice([1, 2, 2, 2, 3, 3, 4, 6, 8]))):
            (person / f"Person_{i:04d}_{j + 1:04d}.jpg").write_bytes(b"")
    return root


def _build(lfw: Path, seed: int = 0, sites: int = 32):
    return build_realistic(lfw, seed=seed, n_sites=sites, n_test=120, n_same=200)


def test_same_seed_same_design_other_seed_other(lfw: Path) -> None:
    a, b, c = _build(lfw), _build(lfw), _build(lfw, seed=1)
    assert a.sites == b.sites and a.images == b.images
    assert np.array_equal(a.pairs, b.pairs) and np.array_equal(a.folds, b.folds)
    assert [s.people for s in a.sites] != [s.people for s in c.sites]


@pytest.mark.parametrize("sites", [32, 48])
def test_sites_are_small_disjoint_and_never_hold_a_test_person(lfw: Path, sites: int) -> None:
    d = _build(lfw, sites=sites)
    assert len(d.sites) == sites
    members = [p for s in d.sites for p in s.people]
    assert len(members) == len(set(members)), "a person in two sites"
    assert not set(members) & set(d.test_people)
    assert all(10 <= len(s.people) <= 40 for s in d.sites)
    test_images = set(d.test_images.tolist())
    for s in d.sites:
        assert len(s.enrol) == len(s.heldout) == len(s.people)
        for person, enrol, held in zip(s.people, s.enrol, s.heldout, strict=True):
            assert 1 <= len(enrol) <= 5 and 1 <= len(held) <= 2
            assert not set(enrol) & set(held)
            assert all(d.images[i].startswith(person + "/") for i in (*enrol, *held))
        # strangers are test people's photos, one per person
        assert set(s.strangers) <= test_images
        owners = [d.images[i].split("/")[0] for i in s.strangers]
        assert len(owners) == len(set(owners)) and set(owners) <= set(d.test_people)
    # pairs come from test people only, balanced pairs are half same
    assert set(d.pairs.ravel().tolist()) <= test_images
    assert d.same[d.balanced].sum() * 2 == d.balanced.sum()
    owner = np.array([d.images[i].split("/")[0] for i in d.pairs.ravel()]).reshape(-1, 2)
    assert np.array_equal(owner[:, 0] == owner[:, 1], d.same)
    assert len(d.looks()) == 14  # six kiosk looks and eight synthetic ones, all dealt


def test_sizes_shrink_when_people_run_out() -> None:
    rng = np.random.default_rng(0)
    sizes = site_sizes(64, 10, 40, 800, rng)
    assert sum(sizes) <= 800 and min(sizes) >= 10 and max(sizes) <= 40
    with pytest.raises(ValueError):
        site_sizes(64, 10, 40, 600, rng)


def test_fedbn_keeps_exactly_the_batch_norm_affines_on_the_site() -> None:
    """FedBN's mask (bench.federation.realistic_sites) covers the parts' batch-norm scales
    and shifts, not conv14's weights nor embed_bn's PReLU slopes (whose name also ends in
    _gamma)."""
    from bench.federation.realistic_sites import local_affines
    from models.federated_parts import PARTS

    for name in ("conv14", "embed_bn"):
        part, mask = PARTS[name], local_affines(name)
        assert mask.size == part.size
        kept = part.unflatten(mask.astype(np.float32))
        for tensor, values in kept.items():
            bn = tensor.endswith(("_gamma", "_beta")) and "relu" not in tensor
            assert values.all() if bn else not values.any(), (name, tensor)
    assert int(local_affines("conv14").sum()) == 2 * (1024 + 1024 + 128)
