"""The engine under a live frame stream, byte-level patching, tail re-embedding."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge.gallery.store import DB_FILENAME, Gallery
from edge.serving import current
from edge.serving.assets import SwapAssets
from edge.serving.current import BASE_TAG, open_engine, read_model
from edge.serving.engine import FrameResult
from edge.serving.onnx_layout import InitializerLayout, LayoutError
from edge.serving.split_model import TailEmbedder
from edge.vision.embed import Embedder
from edge.vision.pipeline import FacePipeline
from models.federated_parts import get_part
from models.onnx_graph import patch_initializers, read_initializers
from models.registry import optimised_sface_path
from tests.support.hot_swap import PART, copy_box, lfw_people, open_swapper, perturbed


def test_byte_patch_gives_the_same_weights_as_the_onnx_patch() -> None:
    data = optimised_sface_path().read_bytes()
    layout = InitializerLayout.scan(data)
    model = onnx.load_from_string(data)
    base = read_initializers(model, PART.names)
    assert all(np.array_equal(layout.read(data, PART.names)[n], base[n]) for n in PART.names)
    new = {n: (v + 0.01).astype(np.float32) for n, v in base.items()}
    patched = onnx.load_from_string(layout.patch(data, new))
    reference = patch_initializers(model, new)
    names = [i.name for i in model.graph.initializer]
    ours, theirs = read_initializers(patched, names), read_initializers(reference, names)
    assert all(np.array_equal(ours[n], theirs[n]) for n in names)
    assert not np.array_equal(ours[PART.names[0]], base[PART.names[0]])
    with pytest.raises(LayoutError, match="expects float32"):
        layout.patch(data, {PART.names[0]: np.zeros(base[PART.names[0]].shape, np.float64)})
    with pytest.raises(LayoutError, match="no raw-data initializer named 'nope'"):
        layout.patch(data, {"nope": np.zeros(1, np.float32)})


@pytest.mark.parametrize("key", ["embed_bn", "conv14", "fc1_lora"])
def test_version_weights_given_by_name_equal_a_byte_patch(key: str, tmp_path: Path) -> None:
    """A swap no longer copies the graph: its tail session gets the new initializers by
    name. That must equal the byte patch, for every part."""
    part = get_part(key)
    assets = SwapAssets(optimised_sface_path(), part, tmp_path, rows=None)
    rng = np.random.default_rng(3)
    base = part.initial_vector(assets.base_weights)
    vector = (base + 0.05 * rng.standard_normal(base.shape) * (np.abs(base) + 0.01)
              ).astype(np.float32)
    weights = part.onnx_weights(vector, assets.base_weights)
    patched = TailEmbedder(assets.tail_layout.patch(assets.tail_bytes, weights))
    by_name = assets.tail_embedder(weights)
    features = rng.standard_normal((4, patched.input_channels, 7, 7)).astype(np.float32)
    ours, reference = by_name.embed_features(features), patched.embed_features(features)
    unchanged = assets.tail_embedder({}).embed_features(features)
    assert float(np.abs(ours - reference).max()) < 1e-6, key
    assert float(np.abs(unchanged - reference).max()) > 1e-3  # the weights did change it
    with pytest.raises(ValueError, match="not initializers of the tail"):
        assets.tail_embedder({"data_bn_gamma": np.zeros(3, np.float32)})


def test_tail_embeddings_match_the_full_model(template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    base_vector = swapper.part.initial_vector(swapper.assets.base_weights)
    swapper.apply("r1", perturbed(base_vector, 1, scale=0.1))
    state = swapper.engine.state
    assert state.model_version == "r1" and len(state.gallery) > 0
    images = swapper.rows.crop_images(state.gallery.crop_ids.tolist())  # type: ignore[union-attr]
    crops = [images[int(i)] for i in state.gallery.crop_ids]
    # the written weights file, as a restart serves it: base + weights, one whole graph
    assert (box / "models" / "sface-fed-r1.weights.npz").stat().st_size < 100_000
    full = Embedder(read_model(swapper.store, swapper.served, optimised_sface_path())
                    ).embed(crops)
    cached = np.sum(full * state.gallery.vectors, axis=1)
    assert float(cached.min()) > 0.9999  # float16 trunk cache + tail == full graph
    split = np.sum(full * state.embedder.embed(crops), axis=1)  # frames: trunk + tail
    assert float(split.min()) > 0.99999
    base = Embedder(optimised_sface_path().read_bytes()).embed(crops)
    assert float(np.sum(full * base, axis=1).mean()) < 0.999  # the swap changed the model


def frame_with_face(lfw_dir: Path) -> np.ndarray:
    """A 640x480 camera-like frame with one LFW face in it."""
    person = lfw_people(lfw_dir, 1, 5)[0]
    image = cv2.imread(str(sorted(person.glob("*.jpg"))[4]))
    assert image is not None and image.shape == (250, 250, 3)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[115:365, 195:445] = image
    return frame


def test_swaps_during_a_live_stream_never_mix_models(template: Path, tmp_path: Path,
                                                     lfw_dir: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    pipeline = FacePipeline.from_model_dir(threads=1)
    swapper = open_swapper(box, detector=pipeline.detector)
    frame = frame_with_face(lfw_dir)
    results: list[FrameResult] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            results.append(swapper.engine.recognise(frame))

    thread = threading.Thread(target=stream)
    thread.start()
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    try:
        for k in range(2):
            swapper.apply(f"r{k + 1}", perturbed(base, k))
        # the frame in flight when r2 was installed may still be on r1: let one run on r2
        deadline = time.monotonic() + 30
        while not any(r.model_version == "r2" for r in results[-3:]):
            assert time.monotonic() < deadline, "no frame ran on the swapped-in model"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    versions = [r.model_version for r in results]
    assert set(versions) >= {"base", "r2"}  # frames ran before and after the swaps
    assert all(r.consistent for r in results)  # probe and gallery always of one model
    assert all(len(r.faces) == 1 and r.matches[0].best_name is not None for r in results)
    assert versions == sorted(versions, key=["base", "r1", "r2"].index)
    assert swapper.rows.versions() == {"sface-fed-r2": len(swapper.engine.state.gallery)}  # type: ignore[union-attr]


def stored_versions(box: Path) -> set[str]:
    with Gallery.open(box) as gallery:
        return set(gallery.model_versions())


def test_a_follower_keeps_its_gallery_while_the_swapper_drops_the_old_rows(
        template: Path, tmp_path: Path, lfw_dir: Path) -> None:
    """Another process (kiosk, serve-api) follows the swap pointer on its watcher's next
    poll, but its frames see the swapper's commits at once. The swapper drops the old
    version's rows right after moving the pointer: a frame in between must keep matching
    against the old version's snapshot, not reload it empty (the person went unknown)."""
    box = copy_box(template, tmp_path / "box")
    person = lfw_people(lfw_dir, 1, 5)[0]
    probe = cv2.imread(str(sorted(person.glob("*.jpg"))[-1]))  # not an enrolled photo
    pipeline = FacePipeline.from_model_dir(threads=1)
    follower = open_engine(pipeline.detector, box / DB_FILENAME, optimised_sface_path(),
                           threads=1, threshold=0.40)  # its watcher is driven by hand
    try:
        assert follower.recognise(probe).matches[0].best_name == person.name
        swapper = open_swapper(box)
        swapper.apply("round-1", perturbed(swapper.base_vector(), 1))  # ... old_dropped
        federated_tag = swapper.engine.state.tag
        swapper.engine.close()
        assert stored_versions(box) == {federated_tag}

        # the follower's watcher has not polled yet: frames stay on the old model, whole
        during = follower.recognise(probe)
        assert during.embedder_version == during.gallery_version == BASE_TAG
        assert during.matches[0].best_name == person.name
        assert len(follower.state.gallery) > 0

        follower.watch_once()  # the poll: installs the pointer's model and its rows
        after = follower.recognise(probe)
        assert after.embedder_version == after.gallery_version == federated_tag
        assert after.matches[0].best_name == person.name
        assert stored_versions(box) == {federated_tag}  # nothing resurrected
    finally:
        follower.close()


def test_a_follower_follows_a_swap_that_lands_while_it_opens(
        template: Path, tmp_path: Path, lfw_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap commits (and drops the old rows) right after a starting process loaded
    the old model: its first poll must follow it (it used to take the pointer's stamp
    after loading, and served the old model for good)."""
    box = copy_box(template, tmp_path / "box")
    person = lfw_people(lfw_dir, 1, 5)[0]
    probe = cv2.imread(str(sorted(person.glob("*.jpg"))[-1]))
    swapper = open_swapper(box)
    real_load = current.load_current

    def load_then_swap(*args: object, **kwargs: object) -> object:
        loaded = real_load(*args, **kwargs)  # type: ignore[arg-type]
        swapper.apply("round-1", perturbed(swapper.base_vector(), 1))
        return loaded

    monkeypatch.setattr(current, "load_current", load_then_swap)
    pipeline = FacePipeline.from_model_dir(threads=1)
    follower = open_engine(pipeline.detector, box / DB_FILENAME, optimised_sface_path(),
                           threads=1, threshold=0.40)
    monkeypatch.undo()
    federated_tag = swapper.engine.state.tag
    swapper.engine.close()
    try:
        assert follower.state.tag == BASE_TAG != federated_tag  # loaded before the swap
        follower.watch_once()
        result = follower.recognise(probe)
        assert result.embedder_version == result.gallery_version == federated_tag
        assert result.matches[0].best_name == person.name
        assert stored_versions(box) == {federated_tag}
    finally:
        follower.close()


def test_a_frame_racing_the_followers_install_takes_the_new_state(
        template: Path, tmp_path: Path, lfw_dir: Path) -> None:
    """The frame thread sees the drop, and the watcher installs the new version just
    before the frame asks whether a swap is pending: the frame must take that new state,
    not reload the dropped version's rows (an empty gallery)."""
    box = copy_box(template, tmp_path / "box")
    person = lfw_people(lfw_dir, 1, 5)[0]
    probe = cv2.imread(str(sorted(person.glob("*.jpg"))[-1]))
    pipeline = FacePipeline.from_model_dir(threads=1)
    follower = open_engine(pipeline.detector, box / DB_FILENAME, optimised_sface_path(),
                           threads=1, threshold=0.40)
    try:
        swapper = open_swapper(box)
        swapper.apply("round-1", perturbed(swapper.base_vector(), 1))
        federated_tag = swapper.engine.state.tag
        swapper.engine.close()
        follow, pending = follower.follow, follower.swap_pending
        assert follow is not None and pending is not None

        def watcher_installs_first() -> bool:
            follow()  # the watcher's poll wins the race
            return pending()

        follower.swap_pending = watcher_installs_first
        result = follower.recognise(probe)
        assert result.embedder_version == result.gallery_version == federated_tag
        assert result.matches[0].best_name == person.name
    finally:
        follower.close()


def test_the_engine_watcher_says_a_lasting_failure_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """A full disk made every poll fail: a traceback twice a second on a box out of disk
    (181 in 90 s). A failure is said when it starts or changes, and its end once."""
    from edge.serving.engine import Engine

    engine = Engine(None, None, 0.4)  # type: ignore[arg-type]
    polls, failing = [], threading.Event()
    failing.set()

    def follow() -> None:
        polls.append(1)
        if len(polls) >= 12:
            failing.clear()
        if failing.is_set():
            raise OSError(28, "No space left on device")

    engine.follow = follow
    with caplog.at_level(logging.INFO, logger="edge.serving.engine"):
        engine.start_watcher(every=0.01)
        deadline = time.monotonic() + 10
        while len(polls) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.stop_watcher()
    said = [r.getMessage() for r in caplog.records]
    assert len(polls) >= 15
    assert sum("poll failed" in m for m in said) == 1, said
    assert sum("polls work again" in m for m in said) == 1, said
