"""Recognise, detect, verify and enrol on the one engine of the process.

Every request goes through the engine that ``serve-api`` opened at start (models never
load per request): the same detect -> align -> embed -> match as ``run`` and
``identify``, on the model the swap pointer names (the engine's watcher follows hot
swaps and enrolments made elsewhere). YuNet keeps per-size state and is not safe to call
from two threads, so requests take turns on the engine (``_engine_lock``); HTTP parsing
and image decoding run outside it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edge.errors import NoFaceError
from edge.gallery.match import NOT_THE_PERSON, not_the_person
from edge.gallery.names import check_name
from edge.gallery.snapshot import GallerySnapshot
from edge.gallery.subjects import Subjects
from edge.serving.recognizer import NotThePerson, Recognizer
from edge.vision.detect import Face
from edge.vision.image_header import decode_image


@dataclass(frozen=True)
class FoundFace:
    face: Face
    embedding: np.ndarray  # unit vector of ``model_version``
    subjects: list[tuple[str, float]]  # best first: (name, cosine similarity)
    model_version: str


@dataclass(frozen=True)
class Timing:
    engine_ms: float  # detect + align + embed + match, as the engine measured them
    detect_ms: float
    embed_ms: float


def ranked_subjects(snapshot: GallerySnapshot, embedding: np.ndarray,
                    count: int) -> list[tuple[str, float]]:
    """The ``count`` closest people (best score over each one's vectors), best first."""
    if len(snapshot) == 0 or count <= 0:
        return []
    scores = snapshot.vectors @ embedding
    best: dict[int, float] = {}
    for person_id, score in zip(snapshot.person_ids.tolist(), scores.tolist(), strict=True):
        if score > best.get(person_id, -2.0):
            best[person_id] = score
    order = sorted(best.items(), key=lambda item: -item[1])[:count]
    return [(snapshot.names[pid], score) for pid, score in order if pid in snapshot.names]


class FaceService:
    def __init__(self, recognizer: Recognizer, max_pixels: int) -> None:
        self.recognizer = recognizer
        self.max_pixels = max_pixels
        self.subjects = Subjects(recognizer.gallery)
        self._engine_lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return self.recognizer.model_version

    def decode(self, data: bytes, source: str) -> np.ndarray:
        """BGR pixels of an upload: header and pixel cap checked before decoding."""
        return decode_image(data, self.max_pixels, source)

    def find(self, bgr: np.ndarray, prediction_count: int = 1,
             det_prob_threshold: float = 0.0, limit: int = 0) -> tuple[list[FoundFace], Timing]:
        """Every face (largest first when ``limit`` keeps only some) with its closest
        subjects, scored exactly as ``fedface-edge identify`` scores them."""
        engine = self.recognizer.engine
        with self._engine_lock:
            result = engine.recognise(bgr)
            state = engine.state  # the snapshot the frame was matched against, unless
        found = []                # a swap landed in between (then: the frame's own best)
        for face, match in zip(result.faces, result.matches, strict=True):
            if face.face.score < det_prob_threshold:
                continue
            if state.tag == result.embedder_version and prediction_count > 1:
                subjects = ranked_subjects(state.gallery, face.embedding, prediction_count)
            elif match.best_name is not None and prediction_count > 0:
                subjects = [(match.best_name, match.score)]
            else:
                subjects = []
            found.append(FoundFace(face.face, face.embedding, subjects, result.embedder_version))
        if limit > 0:
            found = sorted(found, key=lambda f: -f.face.area)[:limit]
        timings = result.timings
        return found, Timing((timings.total + result.match_seconds) * 1e3,
                             timings.detect * 1e3, timings.embed * 1e3)

    def enrol(self, name: str, bgr: np.ndarray, source: str) -> tuple[int, list[str]]:
        """Store the largest face of a photo as a face example of ``name`` (created if
        new) with the serving model's embedding: the new example's id, and what the CLI
        and the kiosk would warn of (a group photo; a new name for someone enrolled)."""
        with self._engine_lock:
            face = self.recognizer.pipeline.embed_image(bgr, source=source)
            new_name = name not in self.subjects.names()
            alike = self.recognizer.look_alike(name, [face.crop], [face.embedding]) \
                if new_name else None
            # the same photo of the same person again is not stored twice: its example's
            # id is given back (the README: enrolling a photo a person has adds nothing)
            stored = self.recognizer.enroll_crops(name, [face.crop], [face.embedding], [None])
        warnings = []
        if face.others:
            warnings.append(f"the photo has {face.others + 1} faces: the largest was taken")
        if alike is not None:
            warnings.append(f"this face looks like {alike.name}, who is already enrolled "
                            f"(similarity {alike.score:.2f}): the same person under two "
                            f"names? If so, delete the subject {name} and add the photo to "
                            f"{alike.name}")
        return stored.crop_ids[0], warnings

    def rename(self, old: str, new: str) -> None:
        """CompreFace's rename, which merges onto a subject the gallery has: only when
        the two are the same person's faces, as a photo added to someone enrolled must be
        (helper-58: renaming Amelie_M onto Tiger_Woods gave Tiger her faces, and the box
        named her Tiger from then on)."""
        new = check_name(new)
        with self._engine_lock:  # no enrolment or swap between the check and the merge
            tag = self.recognizer.engine.state.tag
            gallery = self.recognizer.gallery
            if new != old and new in self.subjects.names():
                wrong = not_the_person(gallery.person_vectors(old, tag),
                                       gallery.person_vectors(new, tag))
                if wrong:
                    raise NotThePerson(
                        f"the faces of {old} do not look like {new}, who is already enrolled "
                        f"(similarity {wrong[0][1]:.2f} with {new}'s photos; under "
                        f"{NOT_THE_PERSON:.2f} is someone else's face): not merged; give "
                        f"{old} a name of their own")
            self.subjects.rename(old, new)
        self.recognizer.engine.refresh_gallery()

    def example_vector(self, crop_id: int) -> tuple[np.ndarray, str]:
        """The serving model's vector of a stored face example (KeyError if none)."""
        engine = self.recognizer.engine
        for _ in range(2):
            state = engine.state
            hits = np.flatnonzero(state.gallery.crop_ids == crop_id)
            if len(hits):
                return state.gallery.vectors[hits[0]], state.tag
            engine.refresh_gallery()  # enrolled a moment ago by another process
        raise KeyError(crop_id)

    def largest(self, bgr: np.ndarray) -> FoundFace:
        faces, _ = self.find(bgr, prediction_count=0)
        if not faces:
            raise NoFaceError("no face found in the image", "")
        return max(faces, key=lambda f: f.face.area)
