"""The live recognition engine: one immutable serving state, swapped by one assignment.

``ServingState`` bundles an embedder (ONNX Runtime session of one model version) with the
gallery snapshot of that same version; it refuses to exist otherwise. A frame reads
``engine.state`` once, at its start, and uses that object for the whole frame, so a
probe is only ever compared with gallery vectors of its own model, whatever a swap does
meanwhile. A swap builds the next state off the hot path and installs it with a single
reference assignment: frames never wait for a swap and never see half of one.

A watcher thread (lower priority) keeps the state's gallery current: when anyone
commits to the gallery database (kiosk enrolment, the CLI in another process), crops
with no embedding of the serving version are embedded and a fresh snapshot installed.
It also runs an optional ``follow`` hook: processes that do not swap themselves follow
the swap pointer written by the one that does (``edge.serving.hot_swap``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.gallery.match import Match
from edge.gallery.snapshot import GalleryRows, GallerySnapshot
from edge.priority import background_niceness, lower_thread_priority
from edge.vision.detect import Face, FaceDetector
from edge.vision.pipeline import FaceEmbedder, RecognisedFace, StageTimings, detect_align_embed

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5


class StateMismatchError(ValueError):
    """An embedder and a gallery snapshot of different model versions were paired."""


@dataclass(frozen=True, eq=False)
class ServingState:
    model_version: str  # federated version name ("base" for the pretrained model)
    embedder: FaceEmbedder = field(repr=False)
    gallery: GallerySnapshot = field(repr=False)
    since: float = field(default_factory=time.time)
    # this model's own match threshold (edge.serving.calibration); None: the engine's
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.embedder.version != self.gallery.model_version:
            raise StateMismatchError(
                f"embedder {self.embedder.version!r} paired with gallery vectors of "
                f"{self.gallery.model_version!r}")

    @property
    def tag(self) -> str:
        """The embedder's version tag, as stored with gallery embeddings."""
        return self.embedder.version


@dataclass(frozen=True, eq=False)
class FrameResult:
    faces: list[RecognisedFace]
    matches: list[Match]
    model_version: str
    embedder_version: str  # of the vectors of this frame's faces
    gallery_version: str  # of the gallery vectors they were compared with
    timings: StageTimings
    match_seconds: float

    @property
    def consistent(self) -> bool:
        return self.embedder_version == self.gallery_version


class Engine:
    """Detect -> align -> embed -> match against the current ``ServingState``."""

    def __init__(self, detector: FaceDetector | None, state: ServingState, threshold: float,
                 rows: GalleryRows | None = None, fixed_threshold: bool = False) -> None:
        # used by the frame thread only (YuNet is not thread-safe); None: no frames here
        self.detector = detector
        self.threshold = threshold  # the deployed one: the pretrained model's
        # a command's own --threshold: every model is served at it, its own one unused
        self.fixed_threshold = fixed_threshold
        self.rows = rows
        # The frame thread's own connection: ``PRAGMA data_version`` on it costs a few
        # microseconds and never waits for a writer (WAL), so an enrolment committed by
        # anyone shows on the very next frame.
        self._frame_rows = GalleryRows(rows.path) if rows is not None else None
        self._frame_data_version = (self._frame_rows.data_version()
                                    if self._frame_rows is not None else 0)
        self._state = state
        self._install_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._seen_data_version: int | None = None
        self.follow: Callable[[], None] | None = None
        # Set by an engine that follows the swap pointer: does the pointer name a version
        # not installed yet? A swapper drops the old version's rows right after committing
        # the pointer, before a follower has loaded the new model: until then the follower
        # keeps the old version's snapshot it has (immutable, still right for the old
        # model) instead of reloading it from rows that are gone.
        self.swap_pending: Callable[[], bool] | None = None
        self.swaps = 0

    # --- the hot path -------------------------------------------------------------------

    @property
    def state(self) -> ServingState:
        return self._state

    def frame_state(self) -> ServingState:
        """The one read of a frame's state, with enrolments committed since the last frame."""
        state = self._state
        if self._frame_rows is not None:
            version = self._frame_rows.data_version()
            if version != self._frame_data_version:
                self._frame_data_version = version
                # In this order: data_version, then the pointer, then the state. A drop
                # seen means the pointer has moved; a follower marks it followed only
                # after installing its state (a swapper installs before it drops), so
                # a state read last is then the new one, never the dropped version's.
                if not self._superseded():
                    state = self._reload_snapshot(self._state)
        return state

    def _superseded(self) -> bool:
        """True when the swap pointer names a version this engine has not installed yet.

        The swapper commits the pointer before it drops other versions' rows, so once a
        change to the database is seen, a pointer read after it tells whether the rows of
        ``state``'s version may be gone (or going): the follower installs the pointer's
        state on its next poll, with its own fresh snapshot."""
        return self.swap_pending is not None and self.swap_pending()

    def threshold_for(self, state: ServingState) -> float:
        """The threshold faces are named at under ``state``'s model: its own, calibrated
        when it was installed, else the deployed one."""
        return self.threshold if state.threshold is None or self.fixed_threshold \
            else state.threshold

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces only (the per-visit engine embeds a few of them, not all)."""
        if self.detector is None:
            raise RuntimeError("this engine has no face detector (it only swaps models)")
        return self.detector.detect(bgr)

    def recognise(self, bgr: np.ndarray) -> FrameResult:
        state = self.frame_state()  # everything below uses `state`
        if self.detector is None:
            raise RuntimeError("this engine has no face detector (it only swaps models)")
        faces, crops, vectors, timings = detect_align_embed(self.detector, state.embedder, bgr)
        t3 = time.perf_counter()
        matches = (state.gallery.identify_many(vectors, self.threshold_for(state))
                   if crops else [])
        recognised = [RecognisedFace(f, c, v, state.tag)
                      for f, c, v in zip(faces, crops, vectors, strict=True)]
        return FrameResult(recognised, matches, state.model_version, state.embedder.version,
                           state.gallery.model_version,
                           timings, time.perf_counter() - t3)

    def embed_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, str]:
        """Embeddings of crops plus the version tag they belong to (one state read)."""
        state = self._state
        return state.embedder.embed(crops), state.tag

    # --- swapping -----------------------------------------------------------------------

    def install(self, new: ServingState, replaces: ServingState | None = None) -> bool:
        """Make ``new`` the serving state (one reference assignment).

        With ``replaces``, only if that is still the serving state (the watcher's gallery
        refresh must not undo a model swap that happened while it worked).
        """
        with self._install_lock:
            if replaces is not None and self._state is not replaces:
                return False
            changed_model = new.tag != self._state.tag
            self._state = new
            if changed_model:
                self.swaps += 1
        return True

    def _reload_snapshot(self, state: ServingState) -> ServingState:
        """Fresh gallery vectors of the frame's own version (someone committed rows)."""
        assert self._frame_rows is not None
        fresh = ServingState(state.model_version, state.embedder,
                             self._frame_rows.snapshot(state.tag), state.since, state.threshold)
        self.install(fresh, replaces=state)  # never undoes a swap installed meanwhile
        return fresh

    def close(self) -> None:
        self.stop_watcher()
        for rows in (self.rows, self._frame_rows):
            if rows is not None:
                rows.close()

    def refresh_gallery(self) -> None:
        """Embed crops missing for the serving version and install a fresh snapshot."""
        if self.rows is None:
            return
        state = self._state
        if self._superseded():  # never re-embed (resurrect) a version being dropped
            return
        missing = self.rows.missing(state.tag)
        if missing:
            images = self.rows.crop_images(missing)
            ids = [i for i in missing if i in images]
            if ids:
                vectors = state.embedder.embed([images[i] for i in ids])
                self.rows.write(state.tag, np.array(ids), vectors)
                log.info("embedded %d crop(s) enrolled under another model with %s",
                         len(ids), state.tag)
        snapshot = self.rows.snapshot(state.tag)
        self.install(ServingState(state.model_version, state.embedder, snapshot, state.since,
                                  state.threshold),
                     replaces=state)

    # --- watcher ------------------------------------------------------------------------

    def start_watcher(self, every: float = WATCH_SECONDS) -> None:
        if self._watcher is None and (self.rows is not None or self.follow is not None):
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, args=(every,),
                                             name="engine-watcher", daemon=True)
            self._watcher.start()

    def stop_watcher(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10.0)
            self._watcher = None

    def watch_once(self) -> None:
        if self.follow is not None:
            self.follow()
        if self.rows is not None:
            version = self.rows.data_version()
            if version != self._seen_data_version:
                self._seen_data_version = version
                self.refresh_gallery()

    def _watch(self, every: float) -> None:
        lower_thread_priority(background_niceness())
        failing: str | None = None  # the failure last logged: a lasting one is said once
        while not self._stop.wait(every):
            try:
                self.watch_once()
            except Exception as exc:  # the watcher must outlive one bad poll (a locked db)
                said = f"{type(exc).__name__}: {exc}"
                if said != failing:  # a full disk logged a traceback twice a second
                    log.exception("engine watcher: poll failed (said again only when it "
                                  "changes)")
                failing = said
            else:
                if failing is not None:
                    log.info("engine watcher: polls work again")
                failing = None
