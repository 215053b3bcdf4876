"""The realistic federated design (issue 18): many small sites, few photos, own cameras.

Everything is a deterministic function of the LFW folder listing and a seed.
- People with 2+ images are shuffled; the first ``n_test`` are test people (never in a
  site): their photos give the verification pairs and each site's strangers.
- The others are dealt to ``n_sites`` disjoint sites of ``min_people``-``max_people``
  people (sizes drawn uniformly, shrunk towards the minimum when LFW runs out).
- Each site's person gets 1-5 enrolment photos (drawn, capped so one photo is left) and
  up to ``heldout_cap`` held-out photos of the rest: the gallery and the 1:N probes.
- Each site has a camera look: the kiosk looks (edge.vision.camera_domain.KIOSK_DOMAINS)
  then ``n_synthetic`` harsh institution looks (bench.common.fed_data), dealt in a
  seeded order so that sites of every size meet every look. Looks repeat across sites
  (48 sites, 14 looks): each look's test set costs one trunk pass over the test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common.fed_data import (
    ImageIndex,
    _listing,
    draw_test_pools,
    institution_domain,
    pick_same_pairs,
)
from edge.vision.camera_domain import KIOSK_DOMAINS, Domain


@dataclass(frozen=True)
class Site:
    index: int
    people: tuple[str, ...]
    enrol: tuple[tuple[int, ...], ...]  # per person: image indices of the enrolment photos
    heldout: tuple[tuple[int, ...], ...]  # per person: image indices of held-out photos
    strangers: tuple[int, ...]  # test image indices, one per stranger (never enrolled)
    domain: Domain


@dataclass
class RealisticDesign:
    images: list[str]  # relative paths; every index below points here
    test_people: list[str]
    pairs: np.ndarray  # (n, 2) image indices of test people
    same: np.ndarray  # (n,) bool
    balanced: np.ndarray  # (n,) bool: same pairs + as many different ones (accuracy)
    folds: np.ndarray  # (n,) fold 0-9 (balanced pairs; others -1)
    test_images: np.ndarray  # sorted image indices of the test people's pool
    sites: list[Site]

    def looks(self) -> list[Domain]:
        return list({s.domain.name: s.domain for s in self.sites}.values())


def camera_looks(seed: int, n_synthetic: int = 8) -> list[Domain]:
    return [*KIOSK_DOMAINS, *(institution_domain(i, seed) for i in range(n_synthetic))]


def site_sizes(n: int, low: int, high: int, available: int,
               rng: np.random.Generator) -> list[int]:
    if n * low > available:
        raise ValueError(f"{available} people cannot fill {n} sites of {low}+ people")
    sizes = rng.integers(low, high + 1, n)
    if sizes.sum() > available:  # shrink the part above the minimum
        scale = (available - n * low) / float((sizes - low).sum())
        sizes = low + np.floor((sizes - low) * scale).astype(int)
    return [int(s) for s in sizes]


def build_realistic(lfw_dir: Path, seed: int = 0, n_sites: int = 48, min_people: int = 10,
                    max_people: int = 40, max_enrol: int = 5, heldout_cap: int = 2,
                    n_test: int = 300, test_pool_cap: int = 3, n_same: int = 1500,
                    diff_per_same: int = 10, strangers: int = 40,
                    n_synthetic: int = 8) -> RealisticDesign:
    listing = _listing(lfw_dir)
    names = sorted(listing)
    rng = np.random.default_rng([seed, 18])
    order = [names[i] for i in rng.permutation(len(names))]
    test_people, site_people = order[:n_test], order[n_test:]
    idx = ImageIndex()
    images = idx.images
    pools = draw_test_pools(listing, test_people, test_pool_cap, rng, idx)
    same_pairs = pick_same_pairs(pools, test_people, n_same, rng)
    k = len(same_pairs)
    diff: dict[tuple[int, int], None] = {}  # insertion-ordered: the first k are balanced
    while len(diff) < k * diff_per_same:
        a, b = rng.choice(len(test_people), 2, replace=False)
        pa, pb = pools[test_people[a]], pools[test_people[b]]
        diff[(int(pa[rng.integers(len(pa))]), int(pb[rng.integers(len(pb))]))] = None
    n_diff = len(diff)
    pairs = np.array(same_pairs + list(diff), dtype=np.int64)
    same = np.arange(len(pairs)) < k
    balanced = np.arange(len(pairs)) < 2 * k
    folds = np.full(len(pairs), -1)
    folds[:k], folds[k : 2 * k] = rng.permutation(k) % 10, rng.permutation(k) % 10
    assert n_diff >= k
    test_images = np.unique([i for p in test_people for i in pools[p]])

    looks = camera_looks(seed, n_synthetic)
    look_order = rng.permutation(n_sites) % len(looks)
    sizes = site_sizes(n_sites, min_people, max_people, len(site_people), rng)
    sites, start = [], 0
    for s, size in enumerate(sizes):
        members = tuple(sorted(site_people[start : start + size]))
        start += size
        enrol, held = [], []
        for person in members:
            files = listing[person]
            perm = rng.permutation(len(files))
            n_enrol = min(int(rng.integers(1, max_enrol + 1)), len(files) - 1)
            enrol.append(tuple(idx(files[i]) for i in sorted(perm[:n_enrol])))
            rest = sorted(perm[n_enrol : n_enrol + heldout_cap])
            held.append(tuple(idx(files[i]) for i in rest))
        by_person = rng.choice(len(test_people), min(strangers, len(test_people)),
                               replace=False)
        stranger_images = tuple(int(pools[test_people[p]][0]) for p in sorted(by_person))
        sites.append(Site(s, members, tuple(enrol), tuple(held), stranger_images,
                          looks[int(look_order[s])]))
    return RealisticDesign(images, test_people, pairs, same, balanced, folds, test_images,
                           sites)
