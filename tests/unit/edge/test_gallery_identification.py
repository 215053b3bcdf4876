"""1:N identification on real LFW faces through the real pipeline and gallery (no CLI).

The protocol of bench/edge/identification.py, smaller: 30 people enrolled with one image
each, 2 probes each of their other images, 60 never-enrolled people. Measured with
``python -m bench.edge.identification`` (50/5/200, seeds 0-2) at the default threshold 0.40:
top-1 94.3-97.4%, false accepts 0.0-1.5%, wrong person named 0%; this smaller protocol,
seeds 0-3: top-1 93.2-97.8%, false accepts 0-1.7% (1 of 60), rank-1 95.8-100%. The bounds
leave room for one or two probes of noise (each known probe is ~2.2%, each stranger 1.7%)
and still fail if alignment, embedding or the threshold goes wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.edge.identification import EmbeddingCache, Protocol, run_protocol
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD
from edge.vision.pipeline import FacePipeline


def test_identification_accuracy_and_false_accepts_on_lfw(lfw_dir: Path) -> None:
    cache = EmbeddingCache(FacePipeline.from_model_dir())
    scores = run_protocol(lfw_dir, cache, Protocol(known=30, unknown=60, probes_per_person=2,
                                                   seed=0))
    assert len(scores.known_scores) >= 40 and len(scores.unknown_scores) == 60
    t = DEFAULT_MATCH_THRESHOLD
    assert scores.accuracy(t) >= 0.85
    assert scores.false_accept_rate(t) <= 0.05
    assert scores.wrong_person_rate(t) <= 0.03
    assert scores.known_right_person.mean() >= 0.93  # rank-1, before any threshold
    # enrolled people score far above strangers: the threshold has room to sit between
    right = scores.known_scores[scores.known_right_person]
    assert np.median(right) - np.median(scores.unknown_scores) >= 0.25


def test_photos_enrolled_as_another_person_need_most_of_them_to_match() -> None:
    """One false accept among many photos of someone is not a second name for an
    enrolled person (helper-48); most of them matching, or a single photo, is."""
    from edge.gallery.match import Match, enrolled_as_another

    tony = Match("Tony", 0.46, 3)
    unknown = Match(None, 0.2, None)
    assert enrolled_as_another([tony, *[unknown] * 39], "Lleyton") is None
    assert enrolled_as_another([tony], "Tony B") == tony
    assert enrolled_as_another([tony, Match("Tony", 0.6, 3), unknown], "Tony B").score == 0.6
    assert enrolled_as_another([Match("Lleyton", 0.9, 1), unknown], "Lleyton") is None


def test_the_face_like_the_persons_photos_alone_is_picked() -> None:
    from edge.gallery.match import face_like_the_rest

    rng = np.random.default_rng(3)
    person, stranger = rng.normal(size=(2, 128)).astype(np.float32)
    alone = [person + 0.3 * rng.normal(size=128).astype(np.float32) for _ in range(3)]
    assert face_like_the_rest([stranger, person], alone) == 1
    assert face_like_the_rest([stranger], alone) is None
    assert face_like_the_rest([], alone) is None  # nothing found on the second look


def test_one_stranger_photo_that_got_through_does_not_open_the_way_for_the_rest(
        kiosk_pipeline: FacePipeline, lfw_dir: Path) -> None:
    """helper-56: one of 20 of Colin Powell's photos added to Hans Blix passed the check
    (cosine to the mean of Hans's photos), and with it in the mean the other 19 passed on
    the next run. The median over the person's photos keeps refusing them."""
    from edge.gallery.match import not_the_person

    def embed(person: str, numbers: range) -> np.ndarray:
        return np.stack([kiosk_pipeline.embed_image_file(
            lfw_dir / person / f"{person}_{n:04d}.jpg").embedding for n in numbers])

    hans, colin = embed("Hans_Blix", range(1, 4)), embed("Colin_Powell", range(1, 8))
    assert len(not_the_person(colin[1:], hans)) == 6  # refused
    got_through = np.vstack([hans, colin[:1]])  # as if Colin_0001 had passed
    assert len(not_the_person(colin[1:], got_through)) == 6, not_the_person(colin[1:],
                                                                             got_through)
    assert not_the_person(embed("Hans_Blix", range(4, 8)), got_through) == []  # his own
