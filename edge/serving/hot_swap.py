"""Hot swap of federated weights into the live engine, crash-safe, validated, reversible.

``HotSwapper.apply(version, vector)`` (the federation client's ``ModelSink``) runs, in a
background thread at a lower CPU priority so the frame thread keeps its core:

1. ``patched``: the vector becomes the graph's initializers, by name (no torch, no parse);
2. ``model_written``: ``sface-fed-<version>.weights.npz`` by atomic rename (0600): its
   initializers and the base model's SHA-256 (``edge.serving.versions``), 22 kB for the
   default part instead of a 38 MB graph;
3. ``session_built``: ONE new InferenceSession, of the tail only (the frames run the
   shared frozen-trunk session then it: ``edge.serving.split_model.SplitEmbedder``);
4. ``reembedded``: every enrolment crop's cached trunk features through that tail (the
   dominant cost);
5. ``validated``: the version's own threshold, then the canary at it (``.admission``);
   a refusal blocks the version, keeps its weights (0600), says why; the old one serves;
6. ``rows_written``: the new version's gallery rows, one transaction;
7. ``committed``: ``current.json`` names the new version (atomic rename): THE commit
   point (the rows of whatever the pointer names always exist);
8. ``swapped``: the new (session, gallery snapshot) state installed by one assignment;
9. ``old_dropped``: other versions' rows and files deleted (N-1's stays for rollback).

A restart (``HotSwapper.__init__``) reads the pointer, serves that, drops rows of other
versions and stray files, so a box killed at any moment serves one consistent model.
``$FEDFACE_SWAP_CRASH_AFTER=<step>`` makes the process SIGKILL itself right after that
step, for the crash-safety tests (``edge.serving.swap_steps``: steps, timings, the hook).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from edge.errors import FedFaceError
from edge.gallery.snapshot import GalleryRows, empty_snapshot
from edge.priority import background_niceness
from edge.serving.admission import ModelRefused, admit
from edge.serving.assets import SwapAssets
from edge.serving.calibration import own_threshold
from edge.serving.canary import CanaryPolicy
from edge.serving.current import BASE_TAG, base_served, load_current, read_model
from edge.serving.engine import Engine, ServingState
from edge.serving.split_model import SplitEmbedder
from edge.serving.swap_steps import (
    CRASH_ENV,
    STEPS,
    SwapLock,
    SwapReport,
    SwapSteps,
    in_background,
)
from edge.serving.versions import (
    BASE_VERSION,
    MODEL_PREFIX,
    WEIGHTS_SUFFIX,
    ModelStoreError,
    Pointer,
    ServedModel,
    SwapStore,
)
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder
from edge.vision.pipeline import FaceEmbedder
from federation.messages import result_round
from models.federated_parts import FederatedPart

# STEPS and CRASH_ENV (edge.serving.swap_steps) too: the crash tests import them from here
__all__ = ["CRASH_ENV", "STEPS", "HotSwapError", "HotSwapper", "ModelRefused", "SwapReport",
           "embedder_version"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class HotSwapError(FedFaceError):
    """A swap or rollback cannot be done (no previous model, unreadable files...)."""

    exit_code = 9


def embedder_version(model_version: str) -> str:
    return f"{MODEL_PREFIX}{model_version}"


class HotSwapper:
    """Owns the box's serving model: restores it at start, swaps and rolls it back."""

    def __init__(self, base_model: Path, part: FederatedPart, swap_dir: Path,
                 gallery_db: Path | None, detector: FaceDetector | None = None,
                 threads: int = 1, threshold: float = 0.40, policy: CanaryPolicy | None = None,
                 base_embedder: Embedder | None = None, calibrate: bool = True) -> None:
        self.base_model, self.part, self.threads = Path(base_model), part, threads
        self.calibrate = calibrate  # each federated version at its own threshold
        self.policy = policy or CanaryPolicy.from_env(threshold)
        self.store = SwapStore(swap_dir, create=True)
        self.rows = GalleryRows(gallery_db) if gallery_db is not None else None
        self.base_embedder = base_embedder
        self._swap_lock = SwapLock(self.store.directory)
        self.assets = SwapAssets(self.base_model, part, self.store.directory, self.rows, threads=1)
        with self._locked():
            served, embedder = load_current(self.store, self.base_model, threads, base_embedder,
                                            owner=True)
            snapshot = self._reconcile(served, embedder)
        self.served = served
        own = own_threshold(served.threshold, served.calibrated_for, threshold)
        self.engine = Engine(detector, ServingState(served.version, embedder, snapshot,
                                                    threshold=own), threshold, self.rows)
        self._stamp = self.store.pointer_stamp()
        self.engine.follow = self._follow
        self.last_report: SwapReport | None = None
        # the swap thread's nice value: the frame thread keeps its core on a 2-core box
        self.niceness = background_niceness()
        self.on_change: Callable[[dict[str, Any]], None] | None = None

    # --- locking and background work -------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self._swap_lock.held()

    def _in_background(self, job: Callable[[], T]) -> T:
        return in_background(job, self.niceness)

    # --- restart / follow ---------------------------------------------------------------

    def _reconcile(self, served: ServedModel, embedder: Embedder) -> Any:
        """Make the disk agree with the pointer: rows of its version only, its files only."""
        pointer = self.store.load()
        keep = {m.model_file for m in (served, pointer.previous if pointer else None)
                if m is not None and m.model_file}
        removed = self.store.remove_strays(keep)
        if removed:
            log.info("removed model files of unfinished or old swaps: %s", removed)
        if self.rows is None:
            return empty_snapshot(served.tag)
        missing = self.rows.missing(served.tag)
        if missing:  # enrolled under another model, or a swap killed before its commit
            images = self.rows.crop_images(missing)
            ids = [i for i in missing if i in images]
            self.rows.write(served.tag, np.array(ids, np.int64),
                            embedder.embed([images[i] for i in ids]) if ids else
                            np.zeros((0, 128), np.float32))
        self.rows.drop_other_versions(served.tag)
        return self.rows.snapshot(served.tag)

    def _follow(self) -> None:
        """Engine watcher hook: another process (``model rollback``) moved the pointer."""
        self.follow_pointer()
        self.assets.warm()  # trunk features of newly enrolled crops, off the hot path

    def follow_pointer(self) -> None:
        """Serve what the swap pointer names if another process moved it (else: a stat)."""
        if self.store.pointer_stamp() != self._stamp:
            with self._locked():
                self._catch_up()

    def _catch_up(self) -> None:
        """Under the swap lock: serve what another process committed meanwhile. Every
        swap does this first: two `train --apply` at once each recorded the version it
        had seen as N-1, and the first one's dropped out of the chain (helper-47)."""
        if self.store.pointer_stamp() == self._stamp:
            return
        self._stamp = self.store.pointer_stamp()
        current = self.store.load()
        if current is not None and current.current.tag != self.engine.state.tag:
            served, embedder = load_current(self.store, self.base_model, self.threads,
                                            self.base_embedder, owner=True)
            snapshot = self._reconcile(served, embedder)
            self.engine.install(ServingState(
                served.version, embedder, snapshot, threshold=own_threshold(
                    served.threshold, served.calibrated_for, self.engine.threshold)))
            self.served = served
            log.info("serving %s: the swap pointer was moved by another process",
                     served.version)

    def start(self) -> HotSwapper:
        """Warm the trunk-feature cache and start the engine's watcher (background)."""
        self.engine.start_watcher()
        return self

    def stop(self) -> None:
        self.engine.stop_watcher()

    # --- swapping -------------------------------------------------------------------------

    def apply(self, version: str, vector: np.ndarray, reason: str = "federated result"
              ) -> None:
        """ModelSink: validate and serve ``vector`` as ``version`` (ModelRefused if not)."""
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if vector.size != self.part.size:
            raise ModelRefused("malformed", f"{vector.size} values for part {self.part.key} "
                               f"({self.part.size} expected)")
        if version == self.engine.state.model_version:
            log.info("model %s is already serving", version)
            return
        blocked = self.store.blocked().get(version)
        if blocked is not None:
            again = ModelRefused("blocked", f"model {version} was refused before "
                                 f"({blocked.get('reason')}); it is not served again")
            again.declined_by_canary = blocked.get("by") == "canary"
            raise again
        self.last_report = self._in_background(lambda: self._swap(version, vector, reason))

    def _swap(self, version: str, vector: np.ndarray, reason: str) -> SwapReport:
        with self._locked():
            self._catch_up()
            steps = SwapSteps()
            weights = self.part.onnx_weights(vector, self.assets.base_weights)
            steps.done("patched")
            model_file = f"{MODEL_PREFIX}{version}{WEIGHTS_SUFFIX}"
            sha = self.store.write_weights(model_file, weights, self.assets.base_sha256,
                                           vector)
            steps.done("model_written")
            return self._install(version, model_file, sha, weights, steps, reason, vector)

    def _install(self, version: str, model_file: str | None, sha: str | None,
                 tail_weights: Mapping[str, np.ndarray], steps: SwapSteps, reason: str,
                 vector: np.ndarray | None, rollback: bool = False,
                 event: str = "rolled_back") -> SwapReport:
        tag = embedder_version(version) if model_file else BASE_TAG
        # One new session per swap: the tail. The frames run the shared trunk session
        # then this tail, and the gallery is re-embedded through the same tail.
        try:
            tail = self.assets.tail_embedder(tail_weights, threads=self.threads)
        except ValueError as exc:  # a rollback to a version of a part with an earlier cut
            raise HotSwapError(f"model {version} cannot be served with part "
                               f"{self.part.name}: {exc}",
                               hint="roll back with that version's part: --part") from exc
        embedder = SplitEmbedder(self.assets.head, tail, tag, threads=self.threads)
        steps.done("session_built")
        crop_ids, person_ids, features = self.assets.features()
        vectors = tail.embed_features(features)
        steps.done("reembedded")
        # the operator's rollback returns to a version that was validated when it came
        base = self.assets.base_vectors(crop_ids, features) if model_file and \
            self.calibrate and result_round(version) else None
        verdict = admit(self.engine, self.policy, crop_ids, person_ids, vectors, base, not rollback)
        canary, own = verdict.canary, verdict.threshold
        if canary is not None and not canary.passed:
            self.store.block(version, canary.reason, vector, by="canary")  # kept, 0600
            if model_file:
                self.store.model_path(model_file).unlink(missing_ok=True)
            entry = self.store.record("refused", version, reason=canary.reason,
                                      canary=canary.to_dict())
            self._changed(entry)
            refusal = ModelRefused("canary_refused", f"model {version} refused: "
                                   f"{canary.reason}; still serving "
                                   f"{self.engine.state.model_version}")
            refusal.canary, refusal.declined_by_canary = canary, True
            raise refusal
        steps.done("validated")
        if self.rows is not None:
            self.rows.write(tag, crop_ids, vectors)
        steps.done("rows_written")
        new = ServedModel(version, tag, model_file, sha, time.time(), reason,
                          self.part.name if model_file else None, own,
                          self.engine.threshold if own is not None else None)
        previous = None if rollback else self.served
        self.store.commit(Pointer(new, previous))
        self._stamp = self.store.pointer_stamp()
        steps.done("committed")
        snapshot = self.rows.snapshot(tag) if self.rows is not None else empty_snapshot(tag)
        self.engine.install(ServingState(version, embedder, snapshot, threshold=own))
        old, self.served = self.served, new
        steps.done("swapped")
        if self.rows is not None:
            self.rows.drop_other_versions(tag)
        self.store.remove_strays({m.model_file for m in (new, previous)
                                  if m is not None and m.model_file})
        steps.done("old_dropped")
        report = SwapReport(version, canary, dict(steps.marks))
        entry = self.store.record(event if rollback else "swapped", version,
                                  previous=old.version, reason=reason,
                                  canary=canary.to_dict() if canary else None,
                                  seconds=report.seconds)
        log.info("serving model %s (was %s) after %.2f s", version, old.version,
                 report.serving_after)
        self._changed(entry)
        return report

    def rollback(self) -> SwapReport:
        """Serve version N-1 again, or the pretrained model once N-1 is gone (a rollback
        keeps none); N is blocked (a re-delivered N is refused)."""
        why = "rolled back on this box (model rollback)"

        def target(pointer: Pointer | None) -> tuple[ServedModel, str]:
            if pointer is None or pointer.current.version == BASE_VERSION:
                raise HotSwapError("the box serves the pretrained model: there is nothing "
                                   "to roll back to", hint="see `fedface-edge model status`")
            previous = pointer.previous  # of the same name: overwritten by N (local runs
            if previous is not None and previous.version == pointer.current.version:  # of
                previous = None  # one second, before their names were made unique): gone
            return previous or base_served(), f"{why} from {pointer.current.version}"
        return cast(SwapReport, self._go_back(target, why, "rolled_back"))

    def serve_initial(self, reason: str, block: bool = True) -> SwapReport | None:
        """The federation went back to its initial model: serve it (no canary); ``block``
        the federated version (poisoned, ``aggregator.rounds.poison``; not for the
        operator's pin, who may pin it again). None: the pretrained model serves already."""
        return self._go_back(lambda _: (base_served(), reason), reason if block else None,
                             "back_to_initial")

    def _go_back(self, target: Callable[[Pointer | None], tuple[ServedModel, str]],
                 block_reason: str | None, event: str) -> SwapReport | None:
        """Serve an earlier, validated version (no canary, no N-1); block the current."""
        def job() -> SwapReport | None:
            with self._locked():
                self._catch_up()
                pointer = self.store.load()
                model, reason = target(pointer)
                if pointer is None or model.version == pointer.current.version:
                    return None
                report = self._install(model.version, model.model_file, model.sha256,
                                       self._version_weights(model), SwapSteps(), reason,
                                       None, rollback=True, event=event)
                if block_reason is not None:
                    self.store.block(pointer.current.version, block_reason)
                return report
        report = self._in_background(job)
        if report is not None:
            self.last_report = report
        return report

    def _version_weights(self, served: ServedModel) -> dict[str, np.ndarray]:
        """The tail initializers a stored version overrides ({} for the base model)."""
        if served.model_file is None:
            return {}
        if served.model_file.endswith(WEIGHTS_SUFFIX):
            weights, base_sha = self.store.read_weights(served)
            if base_sha != self.assets.base_sha256:
                raise HotSwapError(f"model {served.version} was made for another base model",
                                   hint="fedface-edge models fetch")
            return weights
        # a whole .onnx file (written by older releases): all its tail initializers, so a
        # rollback is right whichever part made it
        return self.assets.read_tail_weights(read_model(self.store, served, self.base_model))

    def _changed(self, entry: dict[str, Any]) -> None:
        if self.on_change is not None:
            try:
                self.on_change(entry)
            except Exception:
                log.exception("swap status callback failed")

    # --- what the box serves: read by the federation client, the demo and the tests -----

    @property
    def version(self) -> str | None:
        """The served federated version (None while the pretrained model serves)."""
        served = self.engine.state.model_version
        return None if served == BASE_VERSION else served

    @property
    def embedder(self) -> FaceEmbedder:
        return self.engine.state.embedder

    def base_vector(self) -> np.ndarray:
        """The part's pretrained values: the federation's round-0 vector."""
        return self.part.initial_vector(self.assets.base_weights)

    def served_model_bytes(self) -> bytes:
        """The whole ONNX graph this box serves now (base + the version's weights)."""
        return read_model(self.store, self.served, self.base_model)

    def served_vector(self) -> tuple[str, np.ndarray] | None:
        """(version, part vector) of the served federated model; None while the base model
        serves or when this part's vector of it is not known (a version of another part, a
        file from a release that kept no vectors): the client then starts from pretrained."""
        self.follow_pointer()  # another process's rollback deletes the file it leaves
        served = self.served
        if served.model_file is None:
            return None
        try:
            vector = self.store.read_vector(served)
        except ModelStoreError as exc:
            with self._locked():  # a rollback in another process may be mid-commit: wait
                pass
            self.follow_pointer()
            if self.served is not served:  # it was: read what the box serves now
                return self.served_vector()
            log.warning("the served model's vector is unreadable: %s", exc)
            return None
        if vector is None or vector.size != self.part.size:
            log.warning("no %s vector of the served model %s", self.part.key, served.version)
            return None
        return served.version, vector

    def status_fields(self) -> dict[str, Any]:
        """Extra fields for the box's retained status message."""
        history = self.store.history()
        last = history[-1] if history else None
        return {"serving": self.engine.state.model_version,
                "last_swap": {k: last[k] for k in ("event", "version", "at", "reason")
                              if k in last} if last else None}

