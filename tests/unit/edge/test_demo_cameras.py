"""The demo's camera looks and its closing before/after table."""

from __future__ import annotations

import stat
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.demo.camera import (
    CAMERA_NAMES,
    DEFAULT_CAMERAS,
    KIOSK_CAMERAS,
    Person,
    box_cameras,
    shoot,
)
from edge.demo.progress import Progress
from edge.demo.table import BoxHistory, before_after_table, mean_gain
from edge.vision.camera_domain import CLEAN, KIOSK_DOMAINS, Domain, kiosk_domain


def _photo(lfw_dir: Path) -> Path:
    person = next(p for p in sorted(lfw_dir.iterdir()) if p.is_dir())
    return sorted(person.glob("*.jpg"))[0]


def test_each_kiosk_camera_changes_a_real_photo_deterministically(lfw_dir: Path) -> None:
    image = cv2.imread(str(_photo(lfw_dir)))
    assert image is not None
    looks = []
    for domain in KIOSK_DOMAINS:
        out = domain.apply(image, seed=3)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out, domain.apply(image, seed=3))
        assert np.abs(out.astype(int) - image.astype(int)).mean() > 3.0, domain.name
        looks.append(out)
    for a in range(len(looks)):  # every camera has its own look
        for b in range(a + 1, len(looks)):
            assert not np.array_equal(looks[a], looks[b])
    assert np.array_equal(CLEAN.apply(image, seed=0), image)


def test_the_cli_lists_every_camera() -> None:
    """--help names the cameras by hand (the CLI must not import cv2 to start)."""
    from edge.cli.federate import demo

    option = typing.get_type_hints(demo, include_extras=True)["cameras"].__metadata__[0]
    help_text = " ".join(str(option.help).split())
    assert all(name in help_text for name in CAMERA_NAMES)
    # every kiosk look and no clean photo (a kiosk never sees one), hardest first
    assert sorted(DEFAULT_CAMERAS) == sorted(KIOSK_CAMERAS)
    assert DEFAULT_CAMERAS[:3] == ("ir-grey", "cheap-webcam", "motion-blur")


def test_cameras_are_dealt_round_robin_and_unknown_names_are_refused() -> None:
    dealt = box_cameras(KIOSK_CAMERAS[:2], 3)
    assert [d.name for d in dealt] == [KIOSK_CAMERAS[0], KIOSK_CAMERAS[1],
                                        KIOSK_CAMERAS[0]]
    with pytest.raises(ValueError, match=r"unknown camera domain 'fisheye'.*low-light"):
        box_cameras(["low-light", "fisheye"], 2)
    with pytest.raises(ValueError, match="no camera"):
        box_cameras([], 2)


def test_shoot_writes_private_degraded_copies(lfw_dir: Path, tmp_path: Path) -> None:
    photo = _photo(lfw_dir)
    people = [Person("Ada", [photo], [photo])]
    shot = shoot(people, kiosk_domain("ir-grey"), tmp_path / "camera", seed=1)
    enrol, held = shot[0].enrol[0], shot[0].heldout[0]
    assert enrol.parent == tmp_path / "camera" / "Ada" and enrol != held
    assert stat.S_IMODE(enrol.stat().st_mode) == 0o600
    image = cv2.imread(str(enrol))
    assert image is not None and image.shape == cv2.imread(str(photo)).shape
    assert np.array_equal(image[..., 0], image[..., 2])  # IR-like: grey
    assert shoot(people, CLEAN, tmp_path / "clean", seed=1) == people  # originals kept
    assert not (tmp_path / "clean").exists()


def test_before_after_table_and_mean_gain() -> None:
    rows = [BoxHistory("box-1", "low-light", 8, 16, 0.75, [0.8125, 0.875]),
            BoxHistory("box-2", "backlight", 8, 15, 0.80, [0.80, 0.80]),
            BoxHistory("box-3", "ir-grey", 8, 0, None, [None, None])]
    gain = mean_gain(rows)
    assert gain == pytest.approx((0.125 + 0.0) / 2)
    lines = before_after_table(rows, [1, 2])
    assert "round 1" in lines[1] and "round 2" in lines[1] and "gain" in lines[1]
    assert [c.strip() for c in lines[3].split("|")] == [
        "box-1", "low-light", "8", "16", "75.0%", "81.2%", "87.5%", "+12.5", "n/a"]
    assert lines[5].rstrip().endswith("n/a")
    # over the boxes that have both figures, said when not every box has them
    assert lines[6] == "mean gain over the 2 boxes with both figures (of 3): +6.2 points"
    assert lines[7].startswith("few held-out photos (box-1 16, box-2 15; one photo is 6.2 "
                               "points or more)")
    assert before_after_table([], [1])[-1] == "mean gain over the boxes: n/a"


def test_a_domain_without_kiosk_looks_keeps_its_text() -> None:
    """The federated-accuracy bench keys its cached trunk features by this text."""
    plain = Domain("d00", low_res=24, grey=True, noise_sigma=8.0, jpeg_quality=30)
    assert repr(plain) == (
        "Domain(name='d00', low_res=24, grey=True, colour_gain=(1.0, 1.0, 1.0), gamma=1.0, "
        "blur_sigma=0.0, noise_sigma=8.0, jpeg_quality=30)")
    assert "ir=True" in repr(kiosk_domain("ir-grey"))


def test_a_refused_round_ends_the_round_and_keeps_the_box_on_its_model() -> None:
    """A box whose canary refuses a result still finishes the round (the demo must not
    wait for an 'applied' that never comes), and its figure stays what it served."""
    lines: list[str] = []
    progress = Progress(["box-1", "box-2"], 2, lines.append)
    for box, acc in (("box-1", 0.75), ("box-2", 0.5)):
        progress.add(box, {"event": "enrolled", "camera": "low-light", "people": 4,
                           "crops": 12, "heldout": 8, "accuracy": acc, "seconds": 1.0})
    for r, box1 in ((1, ("applied", 0.875)), (2, ("result_rejected", None))):
        for box, (kind, acc) in (("box-1", box1), ("box-2", ("applied", 0.625 + r / 8))):
            progress.add(box, {"event": "joined", "round": r, "t": 0.0})
            progress.add(box, {"event": "submitted", "round": r, "t": 1.0, "bytes": 10,
                               "encrypt_s": 0.1, "train_s": 1.0})
            assert not progress.round_done(r)
            outcome = {"model": f"round-{r}", "updates": 2, "bytes": 20, "decrypt_s": 0.1,
                       "accuracy": acc} if kind == "applied" else {"reason": "canary_refused"}
            # box-1's canary compared (what its model status shows); box-2's did not
            check = {"before": 0.9, "after": 0.95 if r == 1 else 0.8, "probes": 20}
            progress.add(box, {"event": kind, "round": r, "t": 2.0, **outcome,
                               "check": check if box == "box-1" else None})
        assert progress.round_done(r)
    progress.print_ready()
    assert ("  box-1: serves round-1, held-out identification 75.0% -> 87.5% (+12.5); own "
            "check (model status): 90.0% -> 95.0% over 20 enrolment photos") in lines
    assert ("  box-1: REFUSED round 2's model (canary_refused), keeps its own, held-out "
            "identification 87.5% -> 87.5% (+0.0); own check (model status): 90.0% -> "
            "80.0% over 20 enrolment photos") in lines
    assert ("  box-2: serves round-1, held-out identification 50.0% -> 75.0% (+25.0); own "
            "check: not compared (model status says why)") in lines
    rows = progress.history()
    assert [r.rounds for r in rows] == [[0.875, 0.875], [0.75, 0.875]]
    assert mean_gain(rows) == pytest.approx((0.125 + 0.375) / 2)


def test_a_poisoned_round_sends_the_box_that_applied_it_back_in_the_demo() -> None:
    """Round 1 applied by box-1 only is poisoned; round 2 (built on it) is abandoned;
    round 3's announce sends box-1 back to the pretrained model, then both apply it.
    The demo counts finished rounds (1 and 3) and box-1 starts round 3 from the
    pretrained model's figure."""
    lines: list[str] = []
    progress = Progress(["box-1", "box-2"], 2, lines.append)
    for box, acc in (("box-1", 0.75), ("box-2", 0.5)):
        progress.add(box, {"event": "enrolled", "camera": "low-light", "people": 4,
                           "crops": 12, "heldout": 8, "accuracy": acc, "seconds": 1.0})

    def outcome(box: str, r: int, kind: str, acc: float | None = None) -> None:
        progress.add(box, {"event": "joined", "round": r, "t": 0.0})
        progress.add(box, {"event": "submitted", "round": r, "t": 1.0, "bytes": 10,
                           "encrypt_s": 0.1, "train_s": 1.0})
        data = {"model": f"round-{r}", "updates": 2, "bytes": 20, "decrypt_s": 0.1,
                "accuracy": acc} if kind == "applied" else {"reason": "canary_refused"}
        progress.add(box, {"event": kind, "round": r, "t": 2.0, **data})

    outcome("box-1", 1, "applied", 0.625)
    outcome("box-2", 1, "result_rejected")
    progress.add("box-1", {"event": "joined", "round": 2, "t": 3.0})  # abandoned round
    progress.add("box-1", {"event": "back_to_initial", "round": 3, "t": 4.0,
                           "model": "base", "previous": "round-1", "reason": "poisoned"})
    outcome("box-1", 3, "applied", 0.875)
    outcome("box-2", 3, "applied", 0.625)
    assert progress.done_rounds() == [1, 3]
    progress.print_ready()
    not_compared = "; own check: not compared (model status says why)"
    assert ("  box-1: back on the pretrained model (round-1 was found poisoned), then serves "
            "round-3, held-out identification 75.0% -> 87.5% (+12.5)" + not_compared) in lines
    assert ("  box-2: serves round-3, held-out identification 50.0% -> 62.5% (+12.5)"
            + not_compared) in lines
    rows = progress.history()
    assert [r.rounds for r in rows] == [[0.625, 0.875], [0.5, 0.625]]
    table = before_after_table(rows, progress.done_rounds())
    assert [c.strip() for c in table[1].split("|")][5:7] == ["round 1", "round 3"]
    progress.add("box-1", {"event": "back_to_initial", "round": 4, "t": 5.0,
                           "model": "base", "previous": "round-3", "reason": "poisoned"})
    assert progress.served_after("box-1", 4) == 0.75  # the pretrained model's figure


def test_round_lines_and_table_show_each_models_threshold_and_strangers_named() -> None:
    lines: list[str] = []
    progress = Progress(["box-1"], 1, lines.append)
    progress.add("box-1", {"event": "enrolled", "camera": "ir-grey", "people": 30,
                           "crops": 60, "heldout": 60, "accuracy": 0.7, "seconds": 1.0,
                           "threshold": 0.40, "strangers": 20, "strangers_named": 0.05})
    progress.add("box-1", {"event": "joined", "round": 1, "t": 0.0})
    progress.add("box-1", {"event": "applied", "round": 1, "t": 2.0, "model": "round-1",
                           "updates": 3, "bytes": 20, "decrypt_s": 0.1, "accuracy": 0.75,
                           "threshold": 0.3712, "strangers_named": 0.10})
    progress.print_ready()
    assert ("  box-1: serves round-1, held-out identification 70.0% -> 75.0% (+5.0) at "
            "threshold 0.371, strangers named 5.0% -> 10.0%; own check: not compared "
            "(model status says why)") in lines
    table = before_after_table(progress.history(), progress.done_rounds())
    assert [c.strip() for c in table[3].split("|")][-2:] == ["+5.0", "5.0% -> 10.0%"]
    assert table[-1] == ("strangers named as someone, mean over the boxes: 5.0% -> 10.0% "
                         "(each model at its own threshold)")


def test_strangers_are_people_no_box_enrols_one_photo_each_disjoint_per_box(
        tmp_path: Path) -> None:
    from edge.demo.faces import DemoOptions, pick

    ok, photo = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok  # an image by the box's rule (its content), no face needed to be picked
    for i in range(12):
        person = tmp_path / f"p{i:02d}"
        person.mkdir()
        for k in range(3 if i % 2 else 1):  # odd people have 3 photos, even ones 1
            (person / f"{k}.jpg").write_bytes(photo.tobytes())
    opts = DemoOptions(faces=tmp_path, boxes=2, people_per_box=2, images_per_person=2,
                       heldout_per_person=1, strangers_per_box=3)
    picked = pick(opts)
    plan, strangers = picked.boxes, picked.strangers
    enrolled = {p.name for people in plan for p in people}
    seen = [p.name for people in strangers for p in people]
    assert [len(s) for s in strangers] == [3, 3] and len(set(seen)) == 6
    assert not enrolled & set(seen)
    assert all(len(p.heldout) == 1 and not p.enrol for people in strangers for p in people)
    few = pick(DemoOptions(faces=tmp_path, boxes=2, people_per_box=2, images_per_person=2,
                           heldout_per_person=1, strangers_per_box=50)).strangers
    assert sum(len(s) for s in few) == 12 - len(enrolled)  # as many as there are
