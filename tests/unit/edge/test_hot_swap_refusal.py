"""Weights that wreck the canary are refused, kept (0600), reported; the old model serves."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from edge.serving.canary import CanaryPolicy, leave_one_out_accuracy, run_canary
from edge.serving.hot_swap import ModelRefused
from models.federated_parts import CONV14, DEFAULT_PART, get_part
from tests.support.hot_swap import copy_box, open_swapper, perturbed, template_box, wrecked


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    return template_box(tmp_path_factory.getbasetemp(), lfw_dir)


# The default part, and conv14 (the 1M-value part, still supported). Not embed_bn with
# random affines: on this 8-person gallery they keep leave-one-out accuracy within the
# margin (measured), so the canary rightly lets them through.
@pytest.mark.parametrize(("part_name", "how"), [(DEFAULT_PART, "zero"), (CONV14.name, "zero"),
                                                (CONV14.name, "random")])
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
