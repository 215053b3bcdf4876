"""Each model at its own threshold (edge.serving.calibration): made at the swap from the
box's enrolment crops, stored with the version, served, restored, followed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.cli.served_model import threshold_text
from edge.gallery.holdout import is_calibration_person
from edge.gallery.store import DB_FILENAME
from edge.serving.calibration import (
    MAX_SHIFT,
    calibrate,
    carry_threshold,
    held_out_rows,
    own_threshold,
    stranger_scores,
)
from edge.serving.current import open_engine
from edge.vision.embed import Embedder
from models.registry import optimised_sface_path
from tests.support.hot_swap import copy_box, open_swapper, perturbed


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_the_same_model_keeps_the_deployed_threshold_and_a_moved_one_moves_with_it() -> None:
    reference = np.sort(np.random.default_rng(0).uniform(0.0, 0.6, 200))
    assert carry_threshold(0.40, reference, reference)[0] == pytest.approx(0.40)
    # every stranger score 0.05 lower: the threshold 0.05 lower, the same share passes
    low, share = carry_threshold(0.40, reference, reference - 0.05)
    assert low == pytest.approx(0.35) and share == pytest.approx(np.mean(reference >= 0.40))
    assert np.mean(reference - 0.05 >= low - 1e-9) == pytest.approx(share)
    # scores halved: the threshold moves by the mean's move, also above every score
    half = reference * 0.5
    assert carry_threshold(0.40, reference, half)[0] == pytest.approx(
        0.40 - reference.mean() / 2)
    top, share = carry_threshold(0.70, reference, half)
    assert top == pytest.approx(0.70 - reference.mean() / 2) and share == 0.0


def test_a_model_that_lifts_every_score_gets_a_higher_threshold(
        template: Path) -> None:
    snapshot = open_swapper(copy_box(template, template.parent / "lift")).engine.state.gallery
    base, people = snapshot.vectors, snapshot.person_ids
    common = np.random.default_rng(1).standard_normal(base.shape[1]).astype(np.float32)
    lifted = _unit(base + 0.3 * common / np.linalg.norm(common))  # a shared direction
    cal = calibrate(0.40, base, lifted, people)
    shift = stranger_scores(lifted, people).mean() - stranger_scores(base, people).mean()
    assert shift > 0.02  # the shared direction lifts the strangers' scores
    assert cal is not None and cal.threshold == pytest.approx(0.40 + shift, abs=1e-4)
    assert cal.people == len(set(people.tolist())) and cal.crops == len(base)
    # the highest pseudo-stranger stays about as far under the gate as it was
    margin_before = 0.40 - stranger_scores(base, people)[-1]
    margin_after = cal.threshold - stranger_scores(lifted, people)[-1]
    assert margin_after == pytest.approx(margin_before, abs=0.03)
    assert "for the deployed 0.40" in cal.describe()


def test_too_few_people_and_wild_models_are_handled() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng.standard_normal((12, 128)))
    assert calibrate(0.40, vectors, vectors, np.repeat(np.arange(4), 3)) is None  # 4 people
    people = np.repeat(np.arange(6), 2)
    cal = calibrate(0.40, vectors, vectors, people)
    assert cal is not None and cal.threshold == pytest.approx(0.40, abs=1e-4)
    # a model whose every face looks alike: the shift stops at the cap
    alike = _unit(vectors * 0.05 + 1.0)
    capped = calibrate(0.40, vectors, alike, people)
    assert capped is not None and capped.capped
    assert capped.threshold == pytest.approx(0.40 + MAX_SHIFT)
    assert calibrate(0.40, vectors, np.full_like(vectors, np.nan), people) is None
    assert own_threshold(0.37, 0.40, 0.40) == 0.37
    assert own_threshold(0.37, 0.40, 0.50) is None  # made for another deployed threshold
    assert own_threshold(None, None, 0.40) is None


def test_only_the_calibration_people_s_crops_are_scored() -> None:
    """A model trained on the box's people lowers their crops' scores against everyone
    more than a stranger's: the threshold is measured on the people no round trained on
    (edge.gallery.holdout), and with fewer than two of them the deployed one stays."""
    rng = np.random.default_rng(3)
    people = np.repeat(np.arange(1, 13), 2)  # enrolment ids 1..12: 5 and 10 held out
    held = held_out_rows(people)
    assert set(people[held].tolist()) == {5, 10}
    reference = _unit(rng.standard_normal((len(people), 64)) + 2.0)  # every face alike-ish
    # training spreads the trained people's crops apart; the held-out people's stay
    trained = _unit(reference + np.where(held[:, None], 0.0,
                                         3.0 * rng.standard_normal(reference.shape)))
    every = calibrate(0.40, reference, trained, people)
    own = calibrate(0.40, reference, trained, people, held_out=held)
    assert every is not None and own is not None and own.held_out_people == 2
    shift = (stranger_scores(trained, people, held).mean()
             - stranger_scores(reference, people, held).mean())
    assert own.threshold == pytest.approx(max(0.40 - MAX_SHIFT, 0.40 + shift), abs=1e-4)
    assert own.threshold > every.threshold  # the trained crops' fall does not drag it down
    assert own.crops == int(held.sum()) and "2 calibration people" in own.describe()
    one = np.repeat(np.arange(1, 10), 2)  # ids 1..9: only person 5 is held out
    vectors = _unit(rng.standard_normal((len(one), 64)))
    assert calibrate(0.40, vectors, vectors, one, held_out=held_out_rows(one)) is None


def test_federated_rounds_train_on_everyone_but_the_calibration_people(
        template: Path) -> None:
    from edge.gallery.store import Gallery

    with Gallery.open(copy_box(template, template.parent / "holdout")) as gallery:
        people = {p.id: p.name for p in gallery.people()}
        assert len(people) >= 10
        everyone, trained = gallery.crops_by_person(), gallery.federated_training_crops()
    held = {name for pid, name in people.items() if is_calibration_person(pid)}
    assert len(held) == len(people) // 5 and set(everyone) == set(people.values())
    assert set(trained) == set(everyone) - held
    assert all(len(trained[n]) == len(everyone[n]) for n in trained)
    # the technician sees who they are: `people list`
    from typer.testing import CliRunner

    from edge.cli import app

    box_dir = template.parent / "holdout"
    listed = CliRunner().invoke(app, ["--data-dir", str(box_dir), "people", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {p["name"] for p in json.loads(listed.stdout) if p["calibration"]} == held
    table = CliRunner().invoke(app, ["--data-dir", str(box_dir), "people", "list"])
    assert f"{len(people)} people, {len(held)} of them calibration people" in table.stdout
    assert table.stdout.count(" calibration │") == len(held)


def test_a_swapped_model_serves_at_its_stored_threshold_after_restart_and_in_followers(
        template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    base_state = swapper.engine.state
    assert base_state.threshold is None  # the pretrained model: the deployed threshold
    assert swapper.engine.threshold_for(base_state) == 0.40
    swapper.apply("round-1", perturbed(swapper.base_vector(), 1, scale=0.05))
    state = swapper.engine.state
    pointer = swapper.store.load()
    assert pointer is not None and pointer.current.version == "round-1"
    served = pointer.current
    assert served.calibrated_for == 0.40 and served.threshold is not None
    assert served.threshold != 0.40  # the weights moved: so did the scores
    assert state.threshold == served.threshold
    assert swapper.engine.threshold_for(state) == served.threshold
    # the stored figure is the rule applied to the box's crops, base vs new model
    base_vectors = Embedder(optimised_sface_path(), version="check").embed(
        [swapper.rows.crop_images([int(i)])[int(i)]  # type: ignore[union-attr]
         for i in state.gallery.crop_ids])
    ids = state.gallery.person_ids
    expected = calibrate(0.40, base_vectors, state.gallery.vectors, ids,
                         held_out=held_out_rows(ids))
    assert expected is not None and served.threshold == pytest.approx(expected.threshold,
                                                                      abs=2e-3)
    text = threshold_text(asdict(served), 0.40)  # what `fedface-edge model status` prints
    assert text == (f"match threshold {served.threshold:.3f} (its own, calibrated for the "
                    "deployed 0.40)")
    assert threshold_text(asdict(served), 0.50) == "match threshold 0.50 (the deployed one)"
    swapper.engine.close()
    again = open_swapper(box)  # a restart serves the version at its threshold
    assert again.engine.state.threshold == served.threshold
    # a reader process follows the pointer with it; one run at another threshold does not
    reader = open_engine(None, box / DB_FILENAME, optimised_sface_path(), 1, 0.40)
    other = open_engine(None, box / DB_FILENAME, optimised_sface_path(), 1, 0.50)
    assert reader.threshold_for(reader.state) == served.threshold
    assert other.state.threshold is None and other.threshold_for(other.state) == 0.50
    # `--threshold 0.40` given to a command is 0.40, though it equals the deployed one
    # (a walkthrough's `identify --threshold 0.40` was served at the model's own 0.25)
    given = open_engine(None, box / DB_FILENAME, optimised_sface_path(), 1, 0.40,
                        fixed_threshold=True)
    assert given.threshold_for(given.state) == 0.40
    again.rollback()  # back to the pretrained model: the deployed threshold again
    assert again.engine.state.threshold is None
    for engine in (reader, other, given, again.engine):
        engine.close()


@pytest.mark.parametrize(("calibrate", "version"), [(False, "round-1"), (True, "local-1")])
def test_calibration_off_and_local_models_serve_at_the_deployed_threshold(
        template: Path, tmp_path: Path, calibrate: bool, version: str) -> None:
    """Off by setting; and a model trained on this box's people alone (``train``) is not
    calibrated: its stranger scores on the very crops it learnt run low (the module's
    note: +4.3 points of false accepts)."""
    swapper = open_swapper(copy_box(template, tmp_path / "box"), calibrate=calibrate)
    swapper.apply(version, perturbed(swapper.base_vector(), 1, scale=0.05))
    served = swapper.store.load().current  # type: ignore[union-attr]
    assert served.version == version
    assert served.threshold is None and swapper.engine.state.threshold is None
    assert swapper.engine.threshold_for(swapper.engine.state) == 0.40
    swapper.engine.close()


def test_a_capped_threshold_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A model whose strangers' scores moved past the cap (a walkthrough's noisy DP
    rounds, every round) was logged at info among the swap's lines: now a warning."""
    from types import SimpleNamespace

    from edge.serving.admission import admit

    rng = np.random.default_rng(5)
    people = np.repeat(np.arange(1, 13), 2)  # 12 people, 5 and 10 calibration people
    vectors = _unit(rng.standard_normal((len(people), 128)))
    alike = _unit(vectors * 0.05 + 1.0)
    engine: Any = SimpleNamespace(threshold=0.40)
    with caplog.at_level("INFO", logger="edge.serving.admission"):
        admit(engine, None, np.arange(len(people)), people, vectors, vectors, False)
        admit(engine, None, np.arange(len(people)), people, alike, vectors, False)
    (same, wild) = [r for r in caplog.records if "model threshold" in r.message]
    assert same.levelname == "INFO" and wild.levelname == "WARNING"
    assert f"capped at +-{MAX_SHIFT}" in wild.message
