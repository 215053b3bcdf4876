"""What the demo says of its figures on a small site: which threshold they are at, over
how many boxes a mean is, how few held-out photos they stand on, and what the training
time budget bounds."""

from __future__ import annotations

import typing
from pathlib import Path

from edge.demo.faces import DemoOptions
from edge.demo.progress import Progress
from edge.demo.table import BoxHistory, before_after_table


def _small_site(own_threshold: bool | None) -> Progress:
    """Three boxes of 5 people and 10 held-out photos; box-1 alone saw strangers."""
    lines: list[str] = []
    progress = Progress(["box-1", "box-2", "box-3"], 1, lines.append)
    progress.said = lines  # type: ignore[attr-defined]
    for i, box in enumerate(progress.boxes):
        own = {} if own_threshold is None else {
            "own_threshold": own_threshold, "calibration_people": 1,
            "threshold_needs": "5 people, 2 of them calibration people (one enrolled person "
                               "in 5: 10 or more people)"}
        progress.add(box, {"event": "enrolled", "camera": "ir-grey", "people": 5, "crops": 10,
                           "heldout": 10, "accuracy": 0.8, "seconds": 1.0, "threshold": 0.40,
                           "strangers": 1 - min(i, 1), "strangers_named": None if i else 0.0,
                           **own})
        progress.add(box, {"event": "joined", "round": 1, "t": 0.0})
        progress.add(box, {"event": "submitted", "round": 1, "t": 50.0, "bytes": 10,
                           "encrypt_s": 0.1, "train_s": 48.5, "fit_s": 1.25})
        progress.add(box, {"event": "applied", "round": 1, "t": 52.0, "model": "round-1",
                           "updates": 3, "bytes": 20, "decrypt_s": 0.1, "accuracy": 0.7,
                           "threshold": 0.40, "strangers_named": None if i else 1.0,
                           "check": {"reason": "only 10 probe(s), 20 needed: accuracy not "
                                               "compared"}})
    progress.print_ready()
    return progress


def test_a_box_too_small_for_its_own_threshold_says_it_keeps_the_deployed_one() -> None:
    """The header said "its own, calibrated at each swap" while every box of a small site
    served 0.400 (an own threshold needs 2 calibration people: 10 people)."""
    from edge.demo.run import _threshold_said

    small = _threshold_said(DemoOptions(faces=Path("f"), people_per_box=5))
    assert small == ("at the deployed 0.40 (a federated model gets its own threshold, "
                     "calibrated at each swap, only on a box of 10 or more people: these "
                     "boxes have 5)")
    assert _threshold_said(DemoOptions(faces=Path("f"))).startswith(
        "at the served model's match threshold (its own, calibrated at each swap; a box "
        "left with fewer than 10 people keeps the deployed 0.40)")
    progress = _small_site(own_threshold=False)
    said = progress.said  # type: ignore[attr-defined]
    assert said[0] == ("  box-1 (ir-grey camera): enrolled 5 people (10 photos), 10 held-out; "
                       "identification 80.0% with the pretrained model (1.0 s); its models "
                       "keep the deployed threshold 0.40: a model's own needs 5 people, 2 of "
                       "them calibration people (one enrolled person in 5: 10 or more "
                       "people), this box has 5 people, 1 of them calibration people")
    # the canary's "not compared" says why (as model status), not "model status says why"
    assert said[4].endswith("at threshold 0.400, strangers named 0.0% -> 100.0%; own check "
                            "(model status): only 10 probe(s), 20 needed: accuracy not "
                            "compared"), said[4]
    table = before_after_table(progress.history(), progress.done_rounds())
    assert table[-2] == ("strangers named as someone, mean over the 1 box with strangers (of "
                         "3): 0.0% -> 100.0% (each model at the deployed threshold: too few "
                         "people for its own)")
    # one line under the table: 10 held-out photos are no measure of a gain
    assert table[-1] == ("few held-out photos (box-1 10, box-2 10, box-3 10; one photo is "
                         "10.0 points or more): these figures are too few to measure a gain "
                         "(under 30 a box)")


def test_a_site_of_enough_people_says_nothing_more_of_its_threshold() -> None:
    rows = [BoxHistory(f"box-{i}", "ir-grey", 30, 60, 0.8, [0.85], 0.02, 0.04)
            for i in (1, 2)]
    table = before_after_table(rows, [1])
    assert table[-2:] == ["mean gain over the boxes: +5.0 points",
                          "strangers named as someone, mean over the boxes: 2.0% -> 4.0% "
                          "(each model at its own threshold)"]
    mixed = [rows[0], BoxHistory("box-2", "ir-grey", 8, 60, 0.8, [0.85], 0.02, 0.04,
                                 own_threshold=False)]
    assert before_after_table(mixed, [1])[-1].endswith(
        "(each model at its own threshold; at the deployed one on box-2)")


def test_the_round_line_says_what_the_training_budget_bounds() -> None:
    """`train 48.5 s` under a 20 s --train-budget: the budget bounds the optimisation
    steps only (not the round's process start nor the first round's trunk features)."""
    said = _small_site(own_threshold=None).said  # type: ignore[attr-defined]
    line = next(s for s in said if s.startswith("round 1:"))
    assert "| train 48.5 s (optimising 1.2 s of it: what --train-budget bounds), " in line
    from edge.cli.federate import demo

    option = typing.get_type_hints(demo, include_extras=True)["train_budget"].__metadata__[0]
    text = " ".join(str(option.help).split())
    assert text.startswith("Max seconds a box optimises per round (its class centres and "
                           "its steps; at least one step is taken)")
    assert "Not counted: starting the round's training process" in text
