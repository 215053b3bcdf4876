"""1:N identification on LFW: accuracy for enrolled people, false accepts for strangers.

Protocol (deterministic per seed): pick ``known`` people with 2+ images; enrol ONE image
of each in a real gallery (edge.gallery.store.Gallery); probe with up to ``probes`` of their
other images, plus one image each of ``unknown`` people never enrolled. A known probe is
correct when it is named as its own person (best score >= threshold); an unknown probe
is a false accept when anyone is named. Repeated over several seeds, medians reported;
OpenCV's recommended SFace threshold 0.363 is the baseline measured in the same run.

    .venv/bin/python -m bench.edge.identification [--lfw DIR] [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common.lfw import default_lfw_dir
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD
from edge.gallery.store import Gallery
from edge.vision.pipeline import FacePipeline

OPENCV_SFACE_THRESHOLD = 0.363
THRESHOLDS = (0.25, 0.30, 0.34, 0.363, 0.38, 0.40, 0.42, 0.45, 0.50, 0.55)


@dataclass(frozen=True)
class Protocol:
    known: int = 50
    unknown: int = 200
    probes_per_person: int = 5
    seed: int = 0


@dataclass
class Scores:
    """Best gallery score of every probe, and whether the best person was the right one."""

    known_scores: np.ndarray  # (n_known_probes,)
    known_right_person: np.ndarray  # (n_known_probes,) bool: top-1 is the probe's person
    unknown_scores: np.ndarray  # (n_unknown_probes,)

    def accuracy(self, threshold: float) -> float:
        named_right = self.known_right_person & (self.known_scores >= threshold)
        return float(named_right.mean())

    def false_accept_rate(self, threshold: float) -> float:
        return float((self.unknown_scores >= threshold).mean())

    def wrong_person_rate(self, threshold: float) -> float:
        """Known probes named as someone else (the worst error: a wrong name shown)."""
        return float((~self.known_right_person & (self.known_scores >= threshold)).mean())


class EmbeddingCache:
    """Image path -> (crop, embedding) of its largest face; shared across seeds."""

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in self._cache:
            face = self.pipeline.embed_image_file(path)
            self._cache[path] = (face.crop, face.embedding)
        return self._cache[path]


def lfw_people(lfw_dir: Path) -> dict[str, list[Path]]:
    people = {}
    for folder in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))
        if images:
            people[folder.name] = images
    return people


def run_protocol(lfw_dir: Path, cache: EmbeddingCache, protocol: Protocol) -> Scores:
    rng = np.random.default_rng(protocol.seed)
    people = lfw_people(lfw_dir)
    several = [name for name, images in people.items() if len(images) >= 2]
    known = [several[i] for i in rng.choice(len(several), protocol.known, replace=False)]
    known_set = set(known)
    strangers_pool = [name for name in people if name not in known_set]
    strangers = [strangers_pool[i] for i in
                 rng.choice(len(strangers_pool), protocol.unknown, replace=False)]
    version = cache.pipeline.embedder.version
    with tempfile.TemporaryDirectory(prefix="fedface-ident-") as tmp:
        gallery = Gallery.open(Path(tmp))
        probes: list[tuple[str | None, Path]] = []
        for name in known:
            images = people[name]
            order = rng.permutation(len(images))
            crop, embedding = cache.get(images[order[0]])
            gallery.enroll(name, [crop], embedding[None, :], version)
            probes += [(name, images[i]) for i in order[1:1 + protocol.probes_per_person]]
        probes += [(None, people[name][int(rng.integers(len(people[name])))])
                   for name in strangers]
        vectors = np.stack([cache.get(path)[1] for _, path in probes])
        # threshold -1: every probe gets its best match; thresholds are applied afterwards
        matches = gallery.identify_many(vectors, version, threshold=-1.0)
        gallery.close()
    is_known = np.array([truth is not None for truth, _ in probes])
    scores = np.array([m.score for m in matches], dtype=np.float64)
    right = np.array([m.best_name == truth for (truth, _), m in zip(probes, matches, strict=True)])
    return Scores(scores[is_known], right[is_known], scores[~is_known])


def table(runs: Sequence[Scores], thresholds: Sequence[float]) -> list[str]:
    lines = [f"{'threshold':>9} {'top-1 acc':>10} {'false accept':>13} {'wrong person':>13}"]
    for t in thresholds:
        acc = statistics.median(r.accuracy(t) for r in runs)
        far = statistics.median(r.false_accept_rate(t) for r in runs)
        wrong = statistics.median(r.wrong_person_rate(t) for r in runs)
        marks = []
        if abs(t - DEFAULT_MATCH_THRESHOLD) < 1e-9:
            marks.append("default")
        if abs(t - OPENCV_SFACE_THRESHOLD) < 1e-9:
            marks.append("OpenCV")
        lines.append(f"{t:9.3f} {acc:10.1%} {far:13.1%} {wrong:13.1%}  {', '.join(marks)}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--known", type=int, default=50)
    parser.add_argument("--unknown", type=int, default=200)
    parser.add_argument("--probes", type=int, default=5, help="probes per enrolled person")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    pipeline = FacePipeline.from_model_dir(args.model_dir, threads=args.threads)
    cache = EmbeddingCache(pipeline)
    runs = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        protocol = Protocol(args.known, args.unknown, args.probes, seed)
        scores = run_protocol(args.lfw, cache, protocol)
        runs.append(scores)
        print(f"seed {seed}: {len(scores.known_scores)} known probes, "
              f"{len(scores.unknown_scores)} unknown probes; at {DEFAULT_MATCH_THRESHOLD}: "
              f"top-1 {scores.accuracy(DEFAULT_MATCH_THRESHOLD):.1%}, false accept "
              f"{scores.false_accept_rate(DEFAULT_MATCH_THRESHOLD):.1%}")
    print(f"\n{args.known} people enrolled with one image each, up to {args.probes} probes "
          f"each, {args.unknown} never-enrolled people; median of {args.seeds} seeds "
          f"({len(cache._cache)} images embedded in {time.perf_counter() - started:.0f} s)")
    fine = sorted({*THRESHOLDS, DEFAULT_MATCH_THRESHOLD})
    for line in table(runs, fine):
        print(line)
    known = np.concatenate([r.known_scores[r.known_right_person] for r in runs])
    unknown = np.concatenate([r.unknown_scores for r in runs])
    print(f"\nscore percentiles  right-person probes: 5% {np.percentile(known, 5):.3f}, "
          f"median {np.median(known):.3f};  strangers: median {np.median(unknown):.3f}, "
          f"95% {np.percentile(unknown, 95):.3f}, 99% {np.percentile(unknown, 99):.3f}, "
          f"max {unknown.max():.3f}")


if __name__ == "__main__":
    main()
