"""Weights that wreck the canary are refused, kept (0600), reported; the old model serves."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from edge.serving.canary import CanaryPolicy, leave_one_out_accuracy, run_canary, sign_test
from edge.serving.hot_swap import ModelRefused
from models.federated_parts import CONV14, DEFAULT_PART, get_part
from tests.support.hot_swap import copy_box, open_swapper, perturbed, wrecked


# The default part, and conv14 (the 1M-value part, still supported). Not random weights
# of the first tensor: on this 8-person gallery (24 probes) embed_bn's keep leave-one-out
# accuracy within the margin, and conv14's lose one probe and win none (measured), which
# the sign test cannot tell from chance (p = 0.5): a gallery this small cannot judge them.
@pytest.mark.parametrize(("part_name", "how"), [(DEFAULT_PART, "zero"), (CONV14.name, "zero")])
def test_wrecked_weights_are_refused_and_the_old_model_keeps_serving(
        template: Path, tmp_path: Path, part_name: str, how: str) -> None:
    part = get_part(part_name)
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box, part)
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    swapper.apply("r1", perturbed(base, 1))
    before = swapper.engine.state
    with pytest.raises(ModelRefused, match="refused") as refused:
        swapper.apply("r2", wrecked(part, base, how))
    assert refused.value.reason == "canary_refused"
    state = swapper.engine.state
    assert state is before and state.model_version == "r1"  # not even re-installed
    assert swapper.rows.versions() == {"sface-fed-r1": len(state.gallery)}  # type: ignore[union-attr]
    assert swapper.store.load().current.version == "r1"  # type: ignore[union-attr]
    kept = box / "models" / "refused" / "r2.npy"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    np.testing.assert_array_equal(np.load(kept), wrecked(part, base, how))
    assert not (box / "models" / "sface-fed-r2.weights.npz").exists()
    status = swapper.status_fields()  # what the federation client's retained status carries
    assert status["serving"] == "r1" and status["last_swap"]["event"] == "refused"
    assert status["last_swap"]["version"] == "r2"
    with pytest.raises(ModelRefused, match="refused before") as again:
        swapper.apply("r2", wrecked(part, base, how))  # a re-delivered result
    assert again.value.reason == "blocked"
    # still only its canary's doing: the federation client keeps training from it
    assert refused.value.declined_by_canary and again.value.declined_by_canary
    swapper.apply("r3", perturbed(base, 3))  # a later good result is taken
    assert swapper.engine.state.model_version == "r3"


def test_an_accuracy_drop_beyond_the_margin_is_refused(template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    snapshot = swapper.engine.state.gallery
    people = snapshot.person_ids
    current = snapshot.vectors
    acc, probes = leave_one_out_accuracy(current, people, 0.40)
    assert probes == len(people) and acc > 0.8  # real faces: the base model knows them
    # a candidate that confuses a quarter of the crops with someone else's face
    candidate = current.copy()
    confused = np.arange(0, len(people), 4)
    candidate[confused] = current[(confused + 3) % len(people)]
    verdict = run_canary(current, candidate, people, CanaryPolicy(margin=0.02))
    assert not verdict.passed and not verdict.skipped and "drops" in verdict.reason
    assert verdict.candidate is not None and verdict.candidate < acc - 0.02
    assert run_canary(current, candidate, people, CanaryPolicy(margin=1.0)).passed
    assert run_canary(current, current, people, CanaryPolicy()).passed


def test_a_small_gallery_skips_the_accuracy_check_but_not_the_sanity_checks(
        template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    snapshot = open_swapper(box).engine.state.gallery
    few = slice(0, 6)  # two people with three crops each: 6 probes < 10
    vectors, people = snapshot.vectors[few], snapshot.person_ids[few]
    verdict = run_canary(vectors, vectors, people, CanaryPolicy())
    assert verdict.passed and verdict.skipped and verdict.probes == 6
    collapsed = np.repeat(vectors[:1], len(vectors), axis=0)
    assert not run_canary(vectors, collapsed, people, CanaryPolicy()).passed
    broken = vectors.copy()
    broken[0, 0] = np.nan
    assert "non-finite" in run_canary(vectors, broken, people, CanaryPolicy()).reason


def test_margin_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFACE_CANARY_MARGIN", "0.05")
    assert CanaryPolicy.from_env().margin == 0.05
    monkeypatch.setenv("FEDFACE_CANARY_MARGIN", "lots")
    with pytest.raises(ValueError, match="is not a number"):
        CanaryPolicy.from_env()


def test_a_drop_of_a_probe_or_two_is_within_chance_and_a_real_drop_is_not(
        template: Path, tmp_path: Path) -> None:
    """32 probes: one probe lost is 3.1 points, past the 2-point margin, and proves
    nothing (the demo's kiosk boxes refused whole rounds on it); many lost is refused."""
    snapshot = open_swapper(copy_box(template, tmp_path / "box")).engine.state.gallery
    people, current = snapshot.person_ids, snapshot.vectors
    assert sign_test(1, 0) == 0.5 and sign_test(0, 3) == 1.0
    assert sign_test(6, 0) == pytest.approx(1 / 64)
    one = current.copy()
    one[0] = -current[0]  # one crop no longer like its person's others: one probe lost
    verdict = run_canary(current, one, people, CanaryPolicy(margin=0.02))
    assert verdict.passed and not verdict.skipped
    assert verdict.current is not None and verdict.candidate is not None
    assert verdict.current - verdict.candidate > 0.02  # past the margin...
    assert "within chance (1 probes lost, 0 won" in verdict.reason  # ...but by chance
    assert not run_canary(current, one, people, CanaryPolicy(significance=0.6)).passed
    many = current.copy()
    many[::4] = current[(np.arange(len(people))[::4] + 3) % len(people)]
    refused = run_canary(current, many, people, CanaryPolicy(margin=0.02))
    assert not refused.passed and "probes lost" in refused.reason and "p = 0.0" in refused.reason
