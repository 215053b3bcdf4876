"""The federated experiment's data design: identity split, test pairs, institutions, domains.

Everything is a deterministic function of the LFW folder listing and a seed.
- People with 2+ images are split: a fixed 30% are test people (never trained on), the
  rest are split into disjoint institutions of unequal size.
- Test pairs: same-person pairs from a pool of at most 8 images per test person,
  different-person pairs from the same pool, 10 folds of equal same/different counts.
- Each institution has a camera domain: a deterministic degradation (low resolution,
  greyscale or colour cast, sensor noise, JPEG, low light, blur); by default 8 camera
  models, each used by two institutions (institution i has camera i % 8).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.vision.camera_domain import CLEAN, Domain

# Domain (a camera's degradation) is the product's, shared with the demo's boxes
__all__ = ["CLEAN", "Design", "Domain", "Institution", "build_design", "institution_domain"]


def institution_domain(index: int, seed: int) -> Domain:
    """A distinct, harsh camera per institution (about the strength of the reference
    degradation: greyscale, 24 px, noise 8, JPEG 30 -> SFace 99.0% -> 90.8%)."""
    rng = np.random.default_rng([seed, 7919, index])
    grey = bool(index % 2 == 0)
    gain = (1.0, 1.0, 1.0) if grey else tuple(float(g) for g in rng.uniform(0.75, 1.25, 3))
    return Domain(
        name=f"d{index:02d}",
        low_res=int(rng.choice([20, 22, 24, 26, 28])),
        grey=grey,
        colour_gain=gain,  # type: ignore[arg-type]
        gamma=float(rng.choice([1.0, 1.0, 1.7, 2.2])),
        blur_sigma=float(rng.choice([0.0, 0.0, 0.8, 1.2])),
        noise_sigma=float(rng.uniform(5.0, 10.0)),
        jpeg_quality=int(rng.integers(20, 41)),
    )


@dataclass(frozen=True)
class Institution:
    index: int
    people: tuple[str, ...]
    domain: Domain


@dataclass
class Design:
    images: list[str]  # relative paths "Person/Person_0001.jpg"; indices used below
    test_people: list[str]
    pairs: np.ndarray  # (n, 2) image indices
    same: np.ndarray  # (n,) bool
    folds: np.ndarray  # (n,) fold 0-9
    test_images: np.ndarray  # image indices used by the pairs (sorted)
    institutions: list[Institution]
    train_images: dict[str, list[int]] = field(default_factory=dict)  # person -> indices


def _listing(lfw_dir: Path) -> dict[str, list[str]]:
    people = {}
    for person in sorted(p.name for p in lfw_dir.iterdir() if p.is_dir()):
        files = sorted(f.name for f in (lfw_dir / person).glob("*.jpg"))
        if len(files) >= 2:
            people[person] = [f"{person}/{f}" for f in files]
    return people


class ImageIndex:
    """Image paths in first-use order; calling it with a path gives the path's index."""

    def __init__(self) -> None:
        self.images: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, path: str) -> int:
        if path not in self._index:
            self._index[path] = len(self.images)
            self.images.append(path)
        return self._index[path]


def draw_test_pools(listing: dict[str, list[str]], people: list[str], cap: int,
               rng: np.random.Generator, idx: ImageIndex) -> dict[str, list[int]]:
    """Each test person's pool: at most ``cap`` of their photos, drawn, as indices."""
    pools = {}
    for person in people:
        files = listing[person]
        pick = sorted(rng.choice(len(files), min(len(files), cap), replace=False))
        pools[person] = [idx(files[i]) for i in pick]
    return pools


def pick_same_pairs(pools: dict[str, list[int]], people: list[str], n: int,
                    rng: np.random.Generator) -> list[tuple[int, int]]:
    """At most ``n`` same-person pairs drawn from all pairs within the pools."""
    same_all = [pair for p in people for pair in itertools.combinations(pools[p], 2)]
    k = min(n, len(same_all))
    return [same_all[i] for i in sorted(rng.choice(len(same_all), k, replace=False))]


def _sizes(total: int, n: int, low: int, rng: np.random.Generator) -> list[int]:
    extra = total - n * low
    if extra < 0:
        raise ValueError(f"{total} people cannot fill {n} institutions of {low}+ people")
    shares = rng.multinomial(extra, rng.dirichlet(np.full(n, 10.0)))
    return [low + int(s) for s in shares]


def build_design(
    lfw_dir: Path,
    seed: int = 0,
    n_institutions: int = 16,
    min_people: int = 40,
    test_fraction: float = 0.3,
    n_pairs: int = 3000,
    n_cameras: int = 8,
    train_cap: int = 40,
    test_pool_cap: int = 8,
    max_train_people: int | None = None,
    max_test_people: int | None = None,
) -> Design:
    listing = _listing(lfw_dir)
    names = sorted(listing)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    n_test = round(test_fraction * len(names))
    test_people, train_people = order[:n_test], order[n_test:]
    if max_test_people:
        test_people = test_people[:max_test_people]
    if max_train_people:
        train_people = train_people[:max_train_people]

    idx = ImageIndex()
    images = idx.images
    pools = draw_test_pools(listing, test_people, test_pool_cap, rng, idx)
    same_pairs = pick_same_pairs(pools, test_people, n_pairs, rng)
    n_same = len(same_pairs)
    diff_pairs: set[tuple[int, int]] = set()
    while len(diff_pairs) < n_same:
        a, b = rng.choice(len(test_people), 2, replace=False)
        pa, pb = pools[test_people[a]], pools[test_people[b]]
        diff_pairs.add((int(pa[rng.integers(len(pa))]), int(pb[rng.integers(len(pb))])))
    diff = sorted(diff_pairs)
    pairs = np.array(same_pairs + diff, dtype=np.int64)
    same = np.array([True] * n_same + [False] * n_same)
    folds = np.concatenate([rng.permutation(n_same) % 10, rng.permutation(n_same) % 10])

    train_images = {}
    for person in train_people:
        files = listing[person]
        pick = sorted(rng.choice(len(files), min(len(files), train_cap), replace=False))
        train_images[person] = [idx(files[i]) for i in pick]
    sizes = _sizes(len(train_people), n_institutions, min_people, rng)
    institutions, start = [], 0
    for i, size in enumerate(sizes):
        members = tuple(sorted(train_people[start : start + size]))
        # institutions share camera models in pairs: 8 distinct domains for 16 sites
        # (each test domain costs a full trunk pass over the test images)
        domain = institution_domain(i % n_cameras, seed)
        institutions.append(Institution(i, members, domain))
        start += size
    return Design(
        images=images,
        test_people=test_people,
        pairs=pairs,
        same=same,
        folds=folds,
        test_images=np.unique(pairs),
        institutions=institutions,
        train_images=train_images,
    )
