"""Start serving the model the swap pointer names, and follow it when it moves.

Only one process of a box swaps models (the one running the federation client, or the
``fedface-edge model rollback`` command); every process that recognises faces (kiosk,
``run``, the CLI) opens its engine from the same pointer and, while running, follows it:
the rows of a committed version always exist before the pointer names it, so a follower
only has to load the model file, build a session (off the hot path, in the engine's
watcher thread) and install the new state.

Convention: the swap directory is ``<data dir>/models`` next to the gallery database,
as ``fedface-edge join`` lays it out.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from edge.gallery.snapshot import GalleryRows, empty_snapshot
from edge.serving.calibration import own_threshold
from edge.serving.engine import Engine, ServingState
from edge.serving.onnx_layout import InitializerLayout, LayoutError
from edge.serving.versions import (
    BASE_VERSION,
    WEIGHTS_SUFFIX,
    ModelStoreError,
    Pointer,
    ServedModel,
    SwapStore,
)
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder

log = logging.getLogger(__name__)

BASE_TAG = "sface-2021dec"  # edge.vision.embed.Embedder's default version: the pretrained SFace
SWAP_DIRNAME = "models"


def swap_dir_for(gallery_db: Path) -> Path:
    return Path(gallery_db).parent / SWAP_DIRNAME


def base_served() -> ServedModel:
    return ServedModel(BASE_VERSION, BASE_TAG, None, None, 0.0, "pretrained model")


def read_model(store: SwapStore, served: ServedModel, base_model: Path | None) -> bytes:
    """The whole ONNX graph of a served model, checked against the pointer's SHA-256
    (a weights file is applied to the base model it was made for, and only to it)."""
    if served.model_file is None or served.model_file.endswith(WEIGHTS_SUFFIX):
        if base_model is None:
            raise ModelStoreError("the base model's path is needed to serve it")
        base = Path(base_model).read_bytes()
        if served.model_file is None:
            return base
        weights, base_sha = store.read_weights(served)
        if hashlib.sha256(base).hexdigest() != base_sha:
            raise ModelStoreError(
                f"{served.model_file} was made for base model {base_sha[:12]}..., not "
                f"{Path(base_model).name} (re-fetch the pinned models: fedface-edge models "
                "fetch)")
        try:
            return InitializerLayout.scan(base).patch(base, weights)
        except LayoutError as exc:
            raise ModelStoreError(f"{served.model_file} does not fit the base model: "
                                  f"{exc}") from exc
    return store.read_checked(served)  # a whole .onnx file (written by older releases)


def served_models(store: SwapStore) -> tuple[ServedModel, ServedModel | None]:
    pointer = store.load()
    if pointer is None:
        return base_served(), None
    return pointer.current, pointer.previous


def load_current(store: SwapStore, base_model: Path | None, threads: int,
                 base_embedder: Embedder | None = None,
                 owner: bool = False) -> tuple[ServedModel, Embedder]:
    """The pointer's model as a new Embedder; falls back to N-1, then to the base model,
    if a file is missing or damaged (atomic renames make that a disk fault, not a crash
    artefact).

    Only the process that owns the box's model versions (``owner``: the hot swapper of
    ``join``, or ``model rollback``) re-commits the pointer to what it serves and records
    the fallback. Every other process (``identify``, ``run``, the kiosk) falls back in
    memory only: a reader that cannot load a version must never erase it for the box.
    """
    current, previous = served_models(store)
    for candidate in (current, previous, base_served()):
        if candidate is None:
            continue
        if candidate.model_file is None and base_embedder is not None:
            embedder = base_embedder
        else:
            try:
                data = read_model(store, candidate, base_model)
            except ModelStoreError as exc:
                log.error("cannot serve model %s: %s", candidate.version, exc)
                continue
            embedder = Embedder(data, threads=threads, version=candidate.tag)
        if candidate is not current:
            if owner:
                store.commit(Pointer(candidate, None))
                store.record("fallback", candidate.version,
                             reason=f"model file of {current.version} unusable")
            else:
                log.error("serving %s in this process only: %s is unusable here (the box's "
                          "model versions are left as they are)", candidate.version,
                          current.version)
        return candidate, embedder
    raise ModelStoreError(f"no usable model in {store.directory}")


PointerStamp = tuple[int, int] | None


def pointer_seen(store: SwapStore) -> tuple[PointerStamp, str]:
    """The pointer's stamp, then the tag it names (a move in between shows as a changed
    stamp on the next look)."""
    stamp = store.pointer_stamp()
    return stamp, served_models(store)[0].tag


class PointerFollower:
    """Engine ``follow`` hook: install the pointer's model when another process moves it."""

    def __init__(self, engine: Engine, store: SwapStore, base_model: Path | None,
                 threads: int, base_embedder: Embedder | None = None,
                 seen: tuple[PointerStamp, str] | None = None) -> None:
        """``seen``: the pointer's (stamp, tag) read BEFORE the engine's model was loaded
        (a pointer moved while it loaded is then followed on the first poll)."""
        self.engine, self.store, self.base_model = engine, store, base_model
        self.threads, self.base_embedder = threads, base_embedder
        # (pointer stamp, tag it names) read last, and the pointer tag this engine has
        # followed (installed, or fallen back from in memory)
        self._pointer = seen if seen is not None else pointer_seen(store)
        self._stamp, self._followed = self._pointer

    def swap_pending(self) -> bool:
        """The pointer names a version this engine has not followed yet (asked by the
        frame thread on each gallery change: the file is re-read only if its stamp moved)."""
        pointer = self._pointer
        if self.store.pointer_stamp() != pointer[0]:
            pointer = self._pointer = pointer_seen(self.store)
        return pointer[1] != self._followed

    def __call__(self) -> None:
        stamp = self.store.pointer_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        current, _ = served_models(self.store)
        state = self.engine.state
        if current.tag == state.tag:
            self._followed = current.tag
            return
        started = time.perf_counter()
        served, embedder = load_current(self.store, self.base_model, self.threads,
                                        self.base_embedder)
        rows = self.engine.rows
        snapshot = rows.snapshot(served.tag) if rows is not None else empty_snapshot(served.tag)
        self.engine.install(ServingState(
            served.version, embedder, snapshot,
            threshold=own_threshold(served.threshold, served.calibrated_for,
                                    self.engine.threshold)))
        self._followed = current.tag  # even if it fell back: frames reload snapshots again
        self.engine.refresh_gallery()  # crops enrolled since the swapper's re-embedding
        log.info("following the swap pointer: now serving %s (%.2f s)", served.version,
                 time.perf_counter() - started)


def open_engine(detector: FaceDetector | None, gallery_db: Path | None, base_model: Path | None,
                threads: int, threshold: float, base_embedder: Embedder | None = None,
                follow: bool = True, swap_dir: Path | None = None,
                fixed_threshold: bool = False) -> Engine:
    """An engine serving what the swap pointer names (the base model if there is none).

    ``base_embedder`` (e.g. the pipeline's) is reused when the base model is served, so a
    box that never federated builds no extra session; its file is the base model a
    federated version's weights are patched into when ``base_model`` is not given.
    """
    if base_model is None and base_embedder is not None:
        base_model = base_embedder.model_path
    if swap_dir is None:
        if gallery_db is None:
            raise ValueError("open_engine needs a gallery or an explicit swap_dir")
        swap_dir = swap_dir_for(gallery_db)
    store = SwapStore(swap_dir)
    seen = pointer_seen(store)  # before loading: a swap landing meanwhile is followed
    served, embedder = load_current(store, base_model, threads, base_embedder)
    rows = GalleryRows(gallery_db) if gallery_db is not None else None
    snapshot = rows.snapshot(served.tag) if rows is not None else empty_snapshot(served.tag)
    own = own_threshold(served.threshold, served.calibrated_for, threshold)
    engine = Engine(detector, ServingState(served.version, embedder, snapshot, threshold=own),
                    threshold, rows, fixed_threshold)
    if follow:  # first: no refresh re-embeds a version a swap has just dropped
        follower = PointerFollower(engine, store, base_model, threads, base_embedder, seen)
        engine.follow, engine.swap_pending = follower, follower.swap_pending
    if rows is not None:
        engine.refresh_gallery()
    return engine
