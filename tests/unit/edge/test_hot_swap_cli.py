"""``fedface-edge model status`` and ``model rollback`` through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edge.cli import served_model as model_cli
from edge.cli.errors import FedFaceGroup
from edge.federated.result_apply import ResultApplier
from edge.gallery.store import DB_FILENAME
from edge.serving.current import open_engine, read_model
from edge.serving.hot_swap import ModelRefused
from edge.serving.versions import ModelStoreError, Pointer
from models.federated_parts import get_part
from models.registry import optimised_sface_path
from tests.support.hot_swap import (
    PART,
    copy_box,
    open_swapper,
    perturbed,
    wrecked,
)


def cli() -> typer.Typer:
    # the module as edge/cli/__init__.py registers it (one line in COMMAND_MODULES)
    app = typer.Typer(cls=FedFaceGroup, pretty_exceptions_enable=False)
    model_cli.register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def invoke(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli(), list(args), env={"FEDFACE_DATA_DIR": str(data_dir)})
    return result.exit_code, result.stdout, result.stderr


def test_status_rollback_and_the_rolled_back_version_stays_refused(
        template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    code, out, _ = invoke(box, "model", "status")
    assert code == 0 and out.startswith("current   base") and "previous  none" in out
    assert "match threshold 0.40 (the deployed one)" in out
    code, _, err = invoke(box, "model", "rollback")
    assert code == 9 and err.count("\n") <= 2 and "nothing to roll back" in err
    assert "Traceback" not in err

    swapper = open_swapper(box)
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    swapper.apply("r1", perturbed(base, 1))
    swapper.apply("r2", perturbed(base, 2))
    with pytest.raises(ModelRefused):
        swapper.apply("r3", wrecked(PART, base, "zero"))
    swapper.engine.close()

    code, out, _ = invoke(box, "model", "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["current"]["version"] == "r2"
    assert data["previous"]["version"] == "r1"
    assert [e["event"] for e in data["history"]] == ["swapped", "swapped", "refused"]
    assert "collapsed" in data["blocked"]["r3"]["reason"]
    code, out, _ = invoke(box, "model", "status")
    assert "current   r2" in out and "previous  r1" in out and "refused   r3" in out
    # "r2" is not a federated round's name ("round-N"): served at the deployed threshold
    assert out.count("match threshold 0.40 (the deployed one)") == 2

    follower = open_engine(None, box / DB_FILENAME, optimised_sface_path(), threads=1,
                           threshold=0.40)  # e.g. the kiosk, another process
    assert follower.state.model_version == "r2"
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0, err
    follower.watch_once()  # what its watcher does every 0.5 s
    assert follower.state.model_version == "r1" and follower.state.tag == "sface-fed-r1"
    assert len(follower.state.gallery) == len(open_swapper(box).rows.crops())  # type: ignore[union-attr]
    assert "now serving r1" in out
    data = json.loads(invoke(box, "model", "status", "--json")[1])
    assert data["current"]["version"] == "r1" and data["previous"] is None
    assert data["history"][-1]["event"] == "rolled_back" and "r2" in data["blocked"]
    # no N-1 kept, yet not "nothing to roll back to": the next rollback serves base
    said = invoke(box, "model", "status")[1]
    assert "previous  none kept: model rollback serves the pretrained model (base)" in said
    assert "nothing to roll back" not in said

    restarted = open_swapper(box)  # the box's next start serves r1 with r1's gallery
    state = restarted.engine.state
    assert state.model_version == "r1" and state.gallery.model_version == "sface-fed-r1"
    assert len(state.gallery) == len(restarted.rows.crops())  # type: ignore[union-attr]
    with pytest.raises(ModelRefused, match="refused before"):
        restarted.apply("r2", perturbed(base, 2))  # the client re-delivering r2
    restarted.engine.close()

    # a second rollback: N-1 is gone (a rollback keeps none), the pretrained model is
    # always there (it said "there is no previous model to roll back to", exit 9)
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving base" in out, (out, err)
    data = json.loads(invoke(box, "model", "status", "--json")[1])
    assert data["current"]["version"] == "base" and {"r1", "r2"} <= set(data["blocked"])
    code, _, err = invoke(box, "model", "rollback")
    assert code == 9 and "serves the pretrained model: there is nothing to roll back" in err


def test_a_join_reads_the_vector_a_rollback_in_another_process_left_it(
        template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`model rollback` while `join` runs deletes the file of the version it leaves, which
    the join's swapper still served until its watcher looked: the federation client asks
    for the served vector and gets the rolled-back-to version's, with no warning (a
    walkthrough saw "the served model's vector is unreadable: ... missing")."""
    box = copy_box(template, tmp_path / "box")
    join = open_swapper(box)  # the `join` process's swapper; its watcher is not started
    base = join.part.initial_vector(join.assets.base_weights)
    join.apply("r1", perturbed(base, 1))
    join.apply("r2", perturbed(base, 2))
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving r1" in out, err
    assert not (box / "models" / "sface-fed-r2.weights.npz").exists()
    with caplog.at_level("WARNING", logger="edge.serving.hot_swap"):
        served = join.served_vector()
    assert served is not None and served[0] == "r1"
    assert np.array_equal(served[1], perturbed(base, 1))
    assert join.engine.state.model_version == "r1" and not caplog.records
    join.engine.close()


def test_a_rollback_committed_while_the_join_reads_is_followed_without_a_warning(
        template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The race a later walkthrough still hit: the join looked at the pointer just before
    the other process committed its rollback, then found the rolled-back file gone. It
    waits for the swap lock, follows the pointer and reads again (no warning)."""
    box = copy_box(template, tmp_path / "box")
    join = open_swapper(box)
    base = join.part.initial_vector(join.assets.base_weights)
    join.apply("r1", perturbed(base, 1))
    join.apply("r2", perturbed(base, 2))
    before = join.store.pointer_stamp()
    code, _, err = invoke(box, "model", "rollback")
    assert code == 0, err
    real = join.store.pointer_stamp
    looks = iter([before])  # its first look: the pointer as it was before the commit
    join.store.pointer_stamp = lambda: next(looks, None) or real()  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="edge.serving.hot_swap"):
        served = join.served_vector()
    assert served is not None and served[0] == "r1" and not caplog.records
    join.engine.close()


def test_a_join_follows_a_rollback_to_the_pretrained_model(
        template: Path, tmp_path: Path) -> None:
    """`model rollback` from the box's first federated version serves the pretrained
    model: the join's federation client must federate from it (and its status name it)
    instead of going on from the version rolled back from (a walkthrough saw the box
    train two rounds from it, unreported, and apply their result)."""
    box = copy_box(template, tmp_path / "box")
    join = open_swapper(box)
    base = join.part.initial_vector(join.assets.base_weights)
    unused: Any = None
    applier = ResultApplier(unused, unused, PART, join, unused, unused, version="base",
                            vector=base, max_relative_change=1.0, verify=lambda *_: None,
                            publish_status=lambda: None, applied=lambda: None)
    join.apply("round-1", perturbed(base, 1))
    assert applier.follow_served() is True and applier.version == "round-1"
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving base" in out, err
    join.follow_pointer()  # what its watcher does every 0.5 s
    assert applier.follow_served() is True
    assert applier.version == "base" and np.array_equal(applier.vector, base)
    assert applier.base_vector("round-1") is None
    assert applier.refusal_of("round-1") == "rolled back on this box (model rollback)"
    join.engine.close()


def test_rollback_serves_the_previous_version_with_the_part_it_was_made_with(
        template: Path, tmp_path: Path) -> None:
    """A box that changed part (conv14 -> the default): `model rollback` with no --part
    takes the part recorded in the swap pointer; the default part's cut could not hold
    conv14's 1x1 convolution weights."""
    box = copy_box(template, tmp_path / "box")
    conv14 = open_swapper(box, part=get_part("conv14"))
    conv14.apply("c1", perturbed(conv14.part.initial_vector(conv14.assets.base_weights), 1))
    conv14.engine.close()
    swapper = open_swapper(box)  # the default part from now on
    swapper.apply("e1", perturbed(swapper.part.initial_vector(swapper.assets.base_weights), 2))
    swapper.engine.close()
    data = json.loads(invoke(box, "model", "status", "--json")[1])
    assert data["current"]["part"] == PART.name and data["previous"]["part"] == "conv14"

    code, out, err = invoke(box, "model", "rollback", "--part", PART.name)
    assert code == 9 and "cannot be served with part" in err and "Traceback" not in err
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving c1" in out, err
    state = open_swapper(box, part=get_part("conv14")).engine.state
    assert state.model_version == "c1" and state.gallery.model_version == "sface-fed-c1"


def test_a_damaged_or_foreign_weights_file_falls_back_to_the_previous_version(
        template: Path, tmp_path: Path) -> None:
    """A disk fault on the served version's file (atomic renames rule out a torn write):
    the restart serves N-1, says so in the history, and its gallery matches it. A file
    made for another base model is refused the same way."""
    box = _box_serving(template, tmp_path, "r1", "r2")
    damaged = box / "models" / "sface-fed-r2.weights.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    restarted = open_swapper(box)
    state = restarted.engine.state
    assert state.model_version == "r1" and state.gallery.model_version == "sface-fed-r1"
    assert restarted.store.history()[-1]["event"] == "fallback"
    restarted.engine.close()

    # r1's file made for another base: same weights, another base SHA-256 (re-signed
    # pointer, so only the base check can catch it)
    served = restarted.store.load().current  # type: ignore[union-attr]
    weights, _ = restarted.store.read_weights(served)
    sha = restarted.store.write_weights(served.model_file, weights, "0" * 64)  # type: ignore[arg-type]
    restarted.store.commit(Pointer(replace(served, sha256=sha), None))
    with pytest.raises(ModelStoreError, match="was made for base model 000000000000"):
        read_model(restarted.store, restarted.store.load().current,  # type: ignore[union-attr]
                   optimised_sface_path())
    state = open_swapper(box).engine.state
    assert state.model_version == "base" and state.gallery.model_version == "sface-2021dec"


def test_two_processes_swapping_at_once_keep_the_rollback_chain(
        template: Path, tmp_path: Path) -> None:
    """helper-47 ran two `train --apply` at once: the second swap recorded as N-1 the
    version it had seen when it started, so the first one's dropped out of the chain
    and a rollback jumped over it."""
    box = copy_box(template, tmp_path / "box")
    first, second = open_swapper(box), open_swapper(box)  # two processes, both on base
    base = first.part.initial_vector(first.assets.base_weights)
    first.apply("local-1", perturbed(base, 1))
    second.apply("local-2", perturbed(base, 2))  # its watcher has not looked yet
    first.engine.close()
    second.engine.close()
    data = json.loads(invoke(box, "model", "status", "--json")[1])
    assert (data["current"]["version"], data["previous"]["version"]) == ("local-2", "local-1")
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving local-1" in out, (out, err)


def test_two_local_runs_in_one_second_get_two_names(tmp_path: Path) -> None:
    """helper-48: two `train --apply` finishing in the same second both saved
    local-<that second>; the second overwrote the first's weights under the rollback
    chain (DAMAGED, and `model rollback` crashed)."""
    from edge.training.local import claim_version

    results = tmp_path / "train" / "results"
    now = 1_796_655_904.2
    first, second = claim_version(results, now), claim_version(results, now)
    assert first[0] == "local-20261207T150504Z" and second[0] == first[0] + "-2"
    assert first[1] != second[1] and first[1].is_file() and second[1].is_file()
    assert second[1].stat().st_mode & 0o777 == 0o600


def test_a_rollback_past_a_previous_of_the_same_name_serves_base(
        template: Path, tmp_path: Path) -> None:
    """A box left by that collision (current and previous of one name, the previous's
    file overwritten): `model rollback` crashed with AttributeError; it serves base."""
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    swapper.apply("local-x", perturbed(base, 1))
    pointer = swapper.store.load()
    assert pointer is not None
    swapper.store.commit(Pointer(pointer.current, replace(pointer.current, sha256="0" * 64)))
    swapper.engine.close()
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving base" in out, (out, err)


def test_people_remove_deletes_the_trunk_features_of_their_faces(
        template: Path, tmp_path: Path) -> None:
    """helper-48: `people remove` said crops and embeddings were deleted; the trunk
    features of the person's crops (about 0.5 MB each, derived from the face) stayed in
    the swap's and the trainer's caches, also after the next training."""
    import hashlib

    from edge.gallery.store import Gallery

    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    swapper.assets.warm()  # the swap's trunk cache of every crop, as a running box has
    swapper.engine.close()
    trainer_cache = box / "train" / "features" / "model-cut-v4-s0"
    trainer_cache.mkdir(parents=True)
    with Gallery.open(box) as gallery:
        person = gallery.people()[0]
        keys = {c.id: hashlib.sha256(np.ascontiguousarray(c.image).tobytes()).hexdigest()
                for c in gallery.iter_crops()}
        theirs = {keys[c.id] for c in gallery.iter_crops() if c.person_id == person.id}
    for digest in keys.values():  # the trainer's cache names entries by 24 hex digits
        (trainer_cache / f"{digest[:24]}.npy").write_bytes(b"features")
    writing = trainer_cache / f"{'f' * 24}.tmp.npy"  # a training's entry being written
    writing.write_bytes(b"half")
    [trunk] = list((box / "models").glob("trunk-*"))
    assert {f.stem for f in trunk.glob("*.npy")} == {d[:32] for d in keys.values()}
    from edge.cli import app

    removed = CliRunner().invoke(app, ["--data-dir", str(box), "people", "remove", person.name])
    assert removed.exit_code == 0, removed.output
    others = set(keys.values()) - theirs
    assert {f.stem for f in trunk.glob("*.npy")} == {d[:32] for d in others}
    assert {f.stem for f in trainer_cache.glob("*.npy") if f != writing} == \
        {d[:24] for d in others}
    assert writing.exists()  # deleting it under the training would fail that run


def test_one_local_training_at_a_time(tmp_path: Path) -> None:
    """helper-49: two `train --apply` at once both trained from one model and both said
    `now serving`; the second is refused with who holds the box."""
    import os

    from edge.training.api import TrainingError
    from edge.training.local import lock_training

    held = lock_training(tmp_path / "train")
    with pytest.raises(TrainingError, match=rf"another `fedface-edge train` \(pid "
                                            rf"{os.getpid()}\) runs on this box"):
        lock_training(tmp_path / "train")
    held.close()
    lock_training(tmp_path / "train").close()  # free again once the first is done


def test_rolling_back_a_federated_result_says_what_it_means_for_the_federation(
        template: Path, tmp_path: Path) -> None:
    """helper-52's rollback of round-2 stopped a federation whose quorum needed every box
    (the box sits out every round built on it) and nothing at the box said so."""
    box = _box_serving(template, tmp_path, "round-1", "round-2")
    code, out, err = invoke(box, "model", "rollback")
    assert code == 0 and "now serving round-1" in out, err
    assert "note: in a federation this box now sits out the rounds built on round-2; if " \
        "the quorum needs it, no round closes until the operator runs `fedface-aggregator " \
        "models rollback`" in " ".join(err.split())


def _box_serving(template: Path, tmp_path: Path, *versions: str) -> Path:
    """A box that applied ``versions`` in turn (its swapper closed): serves the last."""
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    for i, version in enumerate(versions, 1):
        swapper.apply(version, perturbed(base, i))
    swapper.engine.close()
    return box
