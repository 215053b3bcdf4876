"""Enrolment from the kiosk: several checked shots from the live camera, or photo uploads.

Camera enrolment keeps its shots on the server, per browser session (face crops never go
into a cookie), until the staff member saves or cancels; pending enrolments are bounded
in number and forgotten after the session idle timeout. Nothing reaches the gallery
until the save, which writes all shots in one transaction. Uploads are all-or-nothing
too: one bad photo rejects the request with a message naming it, and nothing is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.errors import FedFaceError
from edge.gallery import Gallery
from edge.kiosk.quality import ShotVerdict, decode_upload, judge_faces
from edge.kiosk.settings import KioskSettings
from edge.kiosk.worker import RecognitionWorker
from edge.pipeline import FacePipeline

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 64
MAX_PENDING = 20


class EnrolmentRejected(FedFaceError):
    """An enrolment request that cannot be carried out; the message is shown to staff."""


def clean_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name:
        raise EnrolmentRejected("Enter the person's name.")
    if len(name) > MAX_NAME_LENGTH:
        raise EnrolmentRejected(f"The name is too long (at most {MAX_NAME_LENGTH} characters).")
    if any(ord(c) < 32 for c in name):
        raise EnrolmentRejected("The name contains control characters.")
    return name


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
    ) -> None:
        self.worker = worker
        self.gallery = gallery
        self.upload_pipeline = upload_pipeline  # its own detector: YuNet is not thread-safe
        self.settings = settings
        self.match_threshold = match_threshold
        self._clock = clock
        self._pending: dict[str, CameraEnrolment] = {}
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()

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
        """Judge the latest recognised frame; keep it as a shot if it passes every check."""
        with self._lock:
            enrolment = self._pending.get(sid)
            if enrolment is None:
                raise EnrolmentRejected("No camera enrolment in progress; start one first.")
            enrolment.touched = self._clock()
            enrolment.attempts += 1
            verdict = self._judge_live(enrolment)
            label = f"Shot {enrolment.attempts}: {verdict.message}"
            enrolment.feedback.append((verdict.ok, label))
            del enrolment.feedback[:-12]
            return ShotVerdict(verdict.ok, label, verdict.face, verdict.sharpness,
                               verdict.face_px)

    def _judge_live(self, enrolment: CameraEnrolment) -> ShotVerdict:
        if len(enrolment.shots) >= self.settings.enrol_max_shots:
            return ShotVerdict(False, f"Already {len(enrolment.shots)} shots, the most kept. "
                                      "Save now.")
        live = self.worker.latest()
        if live is None:
            return ShotVerdict(False, "No camera image yet. Wait for the live view.")
        if enrolment.shots and enrolment.shots[-1].seq == live.seq:
            return ShotVerdict(False, "The camera has not moved on since the last shot. "
                                      "Wait a moment and take the next one.")
        verdict = judge_faces(list(live.faces), self.settings.min_face_px,
                              self.settings.min_sharpness)
        if not verdict.ok or verdict.face is None:
            return verdict
        if enrolment.shots:
            # every shot must look like the earlier ones: a passer-by stepping in
            # between two shots must not end up in someone else's enrolment
            similarity = max(float(np.dot(s.embedding, verdict.face.embedding))
                             for s in enrolment.shots)
            if similarity < self.match_threshold:
                return ShotVerdict(False, f"This does not look like the person of the "
                                          f"earlier shots (similarity {similarity:.2f}). Only "
                                          f"{enrolment.name} should face the camera.")
        enrolment.shots.append(Shot(live.seq, verdict.face.crop, verdict.face.embedding))
        needed = self.settings.enrol_shots
        got = len(enrolment.shots)
        tail = " Ready to save." if got >= needed else f" {needed - got} more needed."
        return ShotVerdict(True, f"{verdict.message} {got} of {needed} taken.{tail}",
                           verdict.face, verdict.sharpness, verdict.face_px)

    def save_camera(self, sid: str) -> Saved:
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
        saved = self._store(name, crops, [f"kiosk camera shot {i + 1}" for i in range(len(crops))])
        self.cancel(sid)
        return saved

    # --- uploads ------------------------------------------------------------------------

    def enrol_uploads(self, raw_name: str, files: Sequence[tuple[str, bytes]]) -> Saved:
        name = clean_name(raw_name)
        files = [(filename or "photo", data) for filename, data in files if filename or data]
        if not files:
            raise EnrolmentRejected("Choose at least one photo to upload.")
        if len(files) > self.settings.max_upload_photos:
            raise EnrolmentRejected(f"At most {self.settings.max_upload_photos} photos per "
                                    "upload.")
        crops = []
        for filename, data in files:
            image = decode_upload(data)
            if image is None:
                raise EnrolmentRejected(f"{filename} is not an image (use a JPEG or PNG "
                                        "photo). Nothing was stored.")
            with self._upload_lock:
                faces = self.upload_pipeline.process(image)
            verdict = judge_faces(faces, self.settings.min_face_px, self.settings.min_sharpness,
                                  single_face=False)
            if not verdict.ok or verdict.face is None:
                raise EnrolmentRejected(f"{filename}: {verdict.message} Nothing was stored.")
            crops.append(verdict.face.crop)
        return self._store(name, crops, [f"kiosk upload {f}" for f, _ in files])

    # --- both ---------------------------------------------------------------------------

    def _store(self, name: str, crops: list[np.ndarray], sources: list[str]) -> Saved:
        existed = any(p.name == name for p in self.gallery.people())
        # embed with the live model at save time: shots taken before a model swap get
        # the new model's vectors, never a mix of versions
        embedder = self.worker.pipeline.embedder
        vectors = embedder.embed(crops)
        person_id = self.gallery.enroll(name, crops, vectors, embedder.version, sources=sources)
        log.info("kiosk enrolled %d face(s) for person %d", len(crops), person_id)
        return Saved(name, person_id, len(crops), existed)
