"""Enrolment from the kiosk: several checked shots from the live camera, or photo uploads.

Camera enrolment keeps its shots on the server, per browser session (face crops never go
into a cookie), until the staff member saves or cancels; pending enrolments are bounded
in number and forgotten after the session idle timeout. Nothing reaches the gallery
until the save, which writes all shots in one transaction. Uploads are all-or-nothing
too: one bad photo rejects the request with a message naming it, and nothing is stored.

A camera shot is only ever taken from a fresh live frame (newer than the previous shot,
at most ``SHOT_MAX_AGE_S`` old, the source running); a shot waits up to the kiosk's
``frame_stale_s`` for one and otherwise says the camera is not live, so a frozen frame
of an ended or unplugged source is never enrolled. Before a camera or alert enrolment is
saved its faces are matched against the gallery: if they look like someone enrolled
under another name, staff see who and the score and must confirm (``DuplicateFace``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from edge.errors import FedFaceError
from edge.gallery.files import crop_digest
from edge.gallery.match import (
    NOT_THE_PERSON,
    enrolled_as_another,
    normalised,
    not_the_person,
)
from edge.gallery.names import NameRejected, check_name
from edge.gallery.store import Gallery, GalleryError
from edge.kiosk.activity import ActivityLog
from edge.kiosk.quality import (
    ShotVerdict,
    UploadRefused,
    check_upload,
    choose_faces,
    decode_upload,
    judge_faces,
    sharpness,
)
from edge.kiosk.settings import KioskSettings
from edge.kiosk.worker import LiveFrame, RecognitionWorker
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

MAX_PENDING = 20
SHOT_MAX_AGE_S = 1.0  # a shot uses a frame at most this old (cameras deliver 10-30 fps)


class EnrolmentRejected(FedFaceError):
    """An enrolment request that cannot be carried out; the message is shown to staff."""


class DuplicateFace(EnrolmentRejected):
    """The faces to enrol match someone already enrolled under another name."""

    def __init__(self, name: str, match_name: str, score: float, threshold: float) -> None:
        super().__init__(f"These photos look like {match_name}, who is already enrolled "
                         f"(similarity {score:.2f}; {threshold:.2f} or more counts as the same "
                         f"person). Save them as {name} only if this is someone else.")
        self.name, self.match_name, self.score = name, match_name, score


def clean_name(raw: str) -> str:
    """The gallery's name rule (``edge.gallery.names``), its refusal as a staff message."""
    try:
        return check_name(raw)
    except NameRejected as exc:
        raise EnrolmentRejected(str(exc)) from None


@dataclass
class Shot:
    seq: int
    crop: np.ndarray = field(repr=False)
    embedding: np.ndarray = field(repr=False)


@dataclass
class CameraEnrolment:
    name: str
    started: float
    touched: float
    shots: list[Shot] = field(default_factory=list)
    feedback: list[tuple[bool, str]] = field(default_factory=list)  # newest last
    attempts: int = 0


@dataclass(frozen=True)
class Saved:
    name: str
    person_id: int
    added: int
    existed: bool
    already: int = 0  # photos the person already had: not added again
    looks_like: DuplicateFace | None = None  # an upload that matches someone else
    group_photos: tuple[str, ...] = ()  # uploads with several faces: the largest was taken
    left_out: tuple[str, ...] = ()  # group photos none of whose faces is like the others
    picked: tuple[str, ...] = ()  # group photos whose face like the others was taken


def _nothing_added(name: str, photos: int) -> EnrolmentRejected:
    return EnrolmentRejected(f"{'These photos are' if photos > 1 else 'This photo is'} "
                             f"already enrolled for {name}: nothing was added.")


class EnrolmentDesk:
    """Pending camera enrolments and the save/upload paths (thread-safe)."""

    def __init__(
        self,
        worker: RecognitionWorker,
        gallery: Gallery,
        upload_pipeline: FacePipeline,
        settings: KioskSettings,
        match_threshold: float,
        clock: Callable[[], float] = time.time,
        alerts: ActivityLog | None = None,  # settled when their stranger is enrolled
    ) -> None:
        self.worker = worker
        self.gallery = gallery
        self.upload_pipeline = upload_pipeline  # its own detector: YuNet is not thread-safe
        self.settings = settings
        self.match_threshold = match_threshold  # the deployed one: the pretrained model's
        self._clock = clock
        self.alerts = alerts
        self._pending: dict[str, CameraEnrolment] = {}
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()

    def _threshold(self) -> float:
        """The same person at the served model's own threshold, as the camera names
        faces (``edge.serving.calibration``)."""
        engine = getattr(self.worker, "engine", None)
        return self.match_threshold if engine is None else engine.threshold_for(engine.state)

    # --- camera -------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for sid in [s for s, e in self._pending.items()
                    if now - e.touched > self.settings.idle_timeout_s]:
            del self._pending[sid]

    def start_camera(self, sid: str, raw_name: str) -> CameraEnrolment:
        name = clean_name(raw_name)
        now = self._clock()
        with self._lock:
            self._expire(now)
            if sid not in self._pending and len(self._pending) >= MAX_PENDING:
                raise EnrolmentRejected("Too many enrolments are in progress on this kiosk; "
                                        "finish or cancel one first.")
            current = self._pending.get(sid)
            if current is not None and current.shots:
                # two tabs share the session: a start in one replaced the other's shots
                # without a word, and its next shot went to this person (helper-44)
                raise EnrolmentRejected(
                    f"An enrolment of {current.name} ({len(current.shots)} shot(s) taken) is "
                    "in progress in this session, maybe in another tab: save or cancel it "
                    "first.")
            enrolment = CameraEnrolment(name, now, now)
            self._pending[sid] = enrolment
            return enrolment

    def pending(self, sid: str) -> CameraEnrolment | None:
        with self._lock:
            self._expire(self._clock())
            return self._pending.get(sid)

    def cancel(self, sid: str) -> None:
        with self._lock:
            self._pending.pop(sid, None)

    def take_shot(self, sid: str) -> ShotVerdict:
        """Judge a fresh live frame; keep it as a shot if it passes every check."""
        with self._lock:
            enrolment = self._pending.get(sid)
            if enrolment is None:
                raise EnrolmentRejected("No camera enrolment in progress; start one first.")
            last_seq = enrolment.shots[-1].seq if enrolment.shots else 0
        # waits outside the lock: other kiosk sessions go on while this one waits
        live = self.worker.fresh_frame(last_seq, SHOT_MAX_AGE_S, self.settings.frame_stale_s)
        with self._lock:
            enrolment = self._pending.get(sid)
            if enrolment is None:
                raise EnrolmentRejected("No camera enrolment in progress; start one first.")
            enrolment.touched = self._clock()
            enrolment.attempts += 1
            verdict = self._judge_live(enrolment, live)
            label = f"Shot {enrolment.attempts}: {verdict.message}"
            enrolment.feedback.append((verdict.ok, label))
            del enrolment.feedback[:-12]
            return replace(verdict, message=label)

    def _judge_live(self, enrolment: CameraEnrolment, live: LiveFrame | None) -> ShotVerdict:
        if len(enrolment.shots) >= self.settings.enrol_max_shots:
            return ShotVerdict(False, f"Already {len(enrolment.shots)} shots, the most kept. "
                                      "Save now.")
        if live is None:
            status = self.worker.status()
            why = status.reason if not status.live else \
                f"no new camera image came within {self.settings.frame_stale_s:g} s."
            return ShotVerdict(False, f"No shot taken: the camera is not live. {why} "
                                      "Shots are only taken from the live camera: check the "
                                      "camera, or enrol from photos.")
        verdict = judge_faces(list(live.faces), self.settings.min_face_px,
                              self.settings.min_sharpness)
        if not verdict.ok or verdict.face is None:
            return verdict
        same = next((i for i, s in enumerate(enrolment.shots, 1)
                     if np.array_equal(s.crop, verdict.face.crop)), None)
        if same is not None:  # a still or looping source: a copy teaches nothing (helper-44)
            return ShotVerdict(False, f"No shot taken: the camera gave the same picture as "
                                      f"shot {same}. Move a little and take it again.")
        if enrolment.shots:
            # every shot must look like the earlier ones: a passer-by stepping in
            # between two shots must not end up in someone else's enrolment
            similarity = max(float(np.dot(s.embedding, verdict.face.embedding))
                             for s in enrolment.shots)
            if similarity < self._threshold():
                return ShotVerdict(False, f"This does not look like the person of the "
                                          f"earlier shots (similarity {similarity:.2f}). Only "
                                          f"{enrolment.name} should face the camera.")
        enrolment.shots.append(Shot(live.seq, verdict.face.crop, verdict.face.embedding))
        needed = self.settings.enrol_shots
        got = len(enrolment.shots)
        tail = " Ready to save." if got >= needed else f" {needed - got} more needed."
        counted = f"{got} of {needed} taken."
        if got > needed:  # more may be taken, up to enrol_max_shots: never "4 of 3"
            counted = f"{got} taken, at most {self.settings.enrol_max_shots}."
        match = next(m for f, m in zip(live.faces, live.matches, strict=True)
                     if f is verdict.face)
        looks_like_someone = match.name is not None and match.name != enrolment.name
        if looks_like_someone:
            tail += (f" Warning: this face looks like {match.name} (score {match.score:.2f}), "
                     "who is already enrolled.")
        return ShotVerdict(True, f"{verdict.message} {counted}{tail}",
                           verdict.face, verdict.sharpness, verdict.face_px,
                           warning=looks_like_someone)

    def save_camera(self, sid: str, confirmed: bool = False) -> Saved:
        with self._lock:
            enrolment = self._pending.get(sid)
            if enrolment is None:
                raise EnrolmentRejected("No camera enrolment in progress; start one first.")
            if len(enrolment.shots) < self.settings.enrol_shots:
                raise EnrolmentRejected(
                    f"{len(enrolment.shots)} good shot(s) so far; {self.settings.enrol_shots} "
                    "are needed before saving.")
            name = enrolment.name
            crops = [s.crop for s in enrolment.shots]
        saved = self._store(name, crops, [f"kiosk camera shot {i + 1}" for i in range(len(crops))],
                            check_duplicates=not confirmed)
        self.cancel(sid)
        return saved

    # --- an alert's face ----------------------------------------------------------------

    def enrol_crop(self, raw_name: str, crop: np.ndarray, source: str,
                   confirmed: bool = False) -> Saved:
        """Enrol one aligned face crop (an unknown-face alert's) under a typed name."""
        name = clean_name(raw_name)
        sharp = sharpness(crop)
        if sharp < self.settings.min_sharpness:
            raise EnrolmentRejected(f"This face image is too blurred to enrol (sharpness "
                                    f"{sharp:.0f}, need {self.settings.min_sharpness:.0f}). "
                                    "Enrol the person from the camera or from photos.")
        return self._store(name, [crop], [source], check_duplicates=not confirmed)

    # --- uploads ------------------------------------------------------------------------

    def enrol_uploads(self, raw_name: str, files: Sequence[tuple[str, bytes]]) -> Saved:
        name = clean_name(raw_name)
        files = [(filename or "photo", data) for filename, data in files if filename or data]
        if not files:
            raise EnrolmentRejected("Choose at least one photo to upload.")
        if len(files) > self.settings.max_upload_photos:
            raise EnrolmentRejected(f"At most {self.settings.max_upload_photos} photos per "
                                    "upload.")
        # every header first: a photo over the pixel cap is refused before any is decoded
        try:
            for filename, data in files:
                check_upload(data, self.settings.max_upload_pixels, filename)
        except UploadRefused as exc:
            raise EnrolmentRejected(f"{exc} Nothing was stored.") from None
        found = []
        for filename, data in files:
            with self._upload_lock:  # one decoded photo (up to 120 MB at 40 MP) at a time
                image = self._decode(filename, data)
                faces = self.upload_pipeline.process(image)
                del image
            if not faces:  # not the camera's "Face the camera" (helper-47)
                raise EnrolmentRejected(f"{filename}: no face found in this photo: use one "
                                        "with a clear, frontal face. Nothing was stored.")
            found.append((filename, faces))
        # a group photo gives the face like the person's other photos, as `enroll`
        choice = choose_faces(found, self.worker.engine.embed_crops,
                              lambda tag: self.gallery.person_vectors(name, tag))
        crops, sources = [], []
        for filename, faces in choice.faces:
            verdict = judge_faces(faces, self.settings.min_face_px, self.settings.min_sharpness,
                                  single_face=False)
            if not verdict.ok or verdict.face is None:
                raise EnrolmentRejected(f"{filename}: {verdict.message} Nothing was stored.")
            crops.append(verdict.face.crop)
            sources.append(f"kiosk upload {filename}")
        if not crops:
            raise EnrolmentRejected(f"None of the faces in these photos looks like {name}'s "
                                    "other photos. Nothing was stored.")
        # uploads are not asked to confirm (the browser would have to send the photos
        # again): saved, and staff told whom they look like (they were not: helper-44)
        saved = self._store(name, crops, sources, warn_duplicates=True)
        return replace(saved, group_photos=tuple(choice.group_photos),
                       left_out=tuple(choice.left_out), picked=tuple(choice.picked))

    def _decode(self, filename: str, data: bytes) -> np.ndarray:
        try:
            return decode_upload(data, self.settings.max_upload_pixels, filename)
        except UploadRefused as exc:
            raise EnrolmentRejected(f"{exc} Nothing was stored.") from None

    # --- both ---------------------------------------------------------------------------

    def _alike(self, faces: list[np.ndarray], vectors: np.ndarray, tag: str) -> list[bool]:
        """Which ``faces`` (crops) are the person of ``vectors`` (none after a swap)."""
        seen, seen_tag = self.worker.engine.embed_crops(faces)
        if seen_tag != tag:
            return [False] * len(faces)  # two models' vectors are never compared
        return [bool(s) for s in (normalised(seen) @ normalised(vectors).T).max(axis=1)
                >= self._threshold()]

    def _duplicate(self, name: str, vectors: np.ndarray, tag: str) -> DuplicateFace | None:
        try:
            matches = self.gallery.identify_many(vectors, tag, self._threshold())
        except GalleryError:  # no embeddings of this model yet: nobody to match
            return None
        best = enrolled_as_another(matches, name)  # most shots or photos, not one
        if best is None or best.name is None:
            return None
        return DuplicateFace(name, best.name, best.score, self._threshold())

    def _store(self, name: str, crops: list[np.ndarray], sources: list[str],
               check_duplicates: bool = False, warn_duplicates: bool = False) -> Saved:
        existed = any(p.name == name for p in self.gallery.people())
        # the same photo enrolled again aligns to the same crop: taken once, as by
        # `fedface-edge enroll` (an upload repeated doubled the person's photos: helper-44)
        held, keep = self.gallery.crop_digests(name), []
        for i, crop in enumerate(crops):
            digest = crop_digest(crop)
            if digest not in held:
                held.add(digest)
                keep.append(i)
        already = len(crops) - len(keep)
        if not keep:
            raise _nothing_added(name, len(crops))
        crops, sources = [crops[i] for i in keep], [sources[i] for i in keep]
        # embed with the served model at save time: never a mix of versions
        vectors, tag = self.worker.engine.embed_crops(crops)
        wrong = not_the_person(vectors, self.gallery.person_vectors(name, tag))
        if wrong:  # someone else's face must not be saved under an enrolled name
            source, score = sources[wrong[0][0]], wrong[0][1]
            what = (source.removeprefix("kiosk upload ") + " does" if "upload " in source[:13]
                    else "The camera shots do" if "camera" in source[:12] else "This face does")
            raise EnrolmentRejected(
                f"{what} not look like {name}, who is already enrolled (similarity "
                f"{score:.2f} with {name}'s photos; under {NOT_THE_PERSON:.2f} is someone "
                "else's face). Nothing was stored. If it is someone else, enrol them under "
                "their own name.")
        duplicate = self._duplicate(name, vectors, tag) if check_duplicates or \
            warn_duplicates else None
        if check_duplicates and duplicate is not None:
            raise duplicate
        try:  # NameRejected: the name differs from one enrolled only in capitals
            stored = self.gallery.enroll_crops(name, crops, vectors, tag, sources=sources)
        except NameRejected as exc:
            raise EnrolmentRejected(f"{exc} Nothing was stored.") from None
        added = sum(stored.new)  # fewer if another enrolment stored the same photo meanwhile
        if not added:
            raise _nothing_added(name, len(crops))
        log.info("kiosk enrolled %d face(s) for person %d", added, stored.person_id)
        if self.alerts is not None:  # the stranger's open alerts are dealt with
            self.alerts.enrolled(name, lambda faces: self._alike(faces, vectors, tag))
        return Saved(name, stored.person_id, added, existed, already + len(crops) - added,
                     duplicate)
