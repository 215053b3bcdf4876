"""Glue of the box's recognition: the face pipeline plus the gallery.

``Recognizer.recognise(frame)`` detects, embeds and identifies every face of a frame;
``Recognizer.enroll_images`` turns photos into gallery entries (one transaction per
person, so a failed enrolment leaves nothing half-written). No torch here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import FedFaceError, ImageReadError, NoFaceError
from edge.gallery.files import GalleryError, crop_digest
from edge.gallery.match import (
    NOT_THE_PERSON,
    Match,
    enrolled_as_another,
    face_like_the_rest,
    not_the_person,
)
from edge.gallery.store import EnrolledCrops, Gallery
from edge.serving.engine import Engine
from edge.serving.events import UNKNOWN, RecognitionEvent
from edge.vision.detect import Face
from edge.vision.image_files import images_in
from edge.vision.pipeline import FacePipeline, RecognisedFace, StageTimings, read_image

log = logging.getLogger(__name__)

__all__ = ["EnrolOutcome", "NotThePerson", "Recognition", "Recognizer", "images_in",
           "people_folders"]


class EnrolInputError(FedFaceError):
    """An enrolment folder does not have the expected layout."""

    exit_code = 3


class NotThePerson(EnrolInputError):
    """A photo to add to an enrolled person is someone else's (edge.gallery.match)."""


def not_the_person_reason(name: str, score: float) -> str:
    return (f"does not look like {name}, who is already enrolled (similarity {score:.2f} "
            f"with {name}'s photos; under {NOT_THE_PERSON:.2f} is someone else's face): not "
            "added; if it is someone else, enrol them under their own name")


@dataclass(frozen=True)
class Recognition:
    face: Face
    match: Match
    model_version: str

    @property
    def name(self) -> str:
        return self.match.name if self.match.name is not None else UNKNOWN

    @property
    def box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.face.box
        return (round(x), round(y), round(w), round(h))

    def to_dict(self) -> dict[str, object]:
        return {
            "box": list(self.box),
            "name": self.name,
            "score": round(self.match.score, 4),
            "person_id": self.match.person_id,
            "det_score": round(self.face.score, 4),
        }

    def event(self, frame: int, ts: float) -> RecognitionEvent:
        return RecognitionEvent(ts=ts, frame=frame, box=self.box, name=self.name,
                                score=self.match.score, model_version=self.model_version,
                                person_id=self.match.person_id, det_score=self.face.score)


@dataclass
class FrameTimings:
    """Seconds per stage for one frame (pipeline stages + gallery match)."""

    stages: StageTimings
    match: float

    @property
    def total(self) -> float:
        return self.stages.total + self.match

    def as_ms(self) -> dict[str, float]:
        return {"detect": self.stages.detect * 1e3, "align": self.stages.align * 1e3,
                "embed": self.stages.embed * 1e3, "match": self.match * 1e3,
                "total": self.total * 1e3}


@dataclass
class EnrolOutcome:
    name: str
    added: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, reason)
    already: list[Path] = field(default_factory=list)  # the same photo enrolled before
    person_id: int | None = None
    # photos with several faces whose largest was taken unchecked (no other photo of the
    # person to compare with), at this box (x, y, w, h)
    group_photos: list[tuple[Path, Box]] = field(default_factory=list)
    # photos with several faces where another than the largest looked like the person
    picked: list[tuple[Path, Box]] = field(default_factory=list)
    looks_like: Match | None = None  # the enrolled person (another name) the photos match
    existed: bool = False  # the person had photos before this enrolment


Box = tuple[int, int, int, int]  # x, y, w, h in the photo
ProgressCallback = Callable[[Path, str | None], None]  # (image, failure reason or None)


class Recognizer:
    """Serves from an ``Engine`` (``edge.serving.engine``): the model the swap pointer names, and
    its gallery snapshot; ``engine.start_watcher()`` makes it follow swaps and enrolments."""

    def __init__(self, pipeline: FacePipeline, gallery: Gallery, threshold: float,
                 engine: Engine | None = None) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.last_timings = FrameTimings(StageTimings(), 0.0)
        if engine is None:
            from edge.serving.current import open_engine

            engine = open_engine(pipeline.detector, gallery.path, None,
                                 threads=pipeline.embedder.threads, threshold=threshold,
                                 base_embedder=pipeline.embedder)
        self.engine = engine

    @property
    def model_version(self) -> str:
        return self.engine.state.tag

    @property
    def threshold(self) -> float:
        """The threshold faces are named at now: the served model's own
        (``edge.serving.calibration``), the deployed one for the pretrained model."""
        return self.engine.threshold_for(self.engine.state)

    def recognise(self, bgr: np.ndarray) -> list[Recognition]:
        result = self.engine.recognise(bgr)
        self.last_timings = FrameTimings(result.timings, result.match_seconds)
        return [Recognition(f.face, m, result.embedder_version)
                for f, m in zip(result.faces, result.matches, strict=True)]

    def enroll_images(
        self,
        name: str,
        images: Sequence[Path],
        max_images: int | None = None,
        skip_bad: bool = True,
        progress: ProgressCallback | None = None,
    ) -> EnrolOutcome:
        """Enrol ``name`` from photos (largest face of each).

        With ``skip_bad`` an unreadable photo or one without a face is recorded in
        ``skipped`` and the next one is tried; without it the first such photo raises and
        nothing is enrolled. ``max_images`` stops after that many usable photos.
        """
        outcome = EnrolOutcome(name)
        crops: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        # an enrolment run twice (a walkthrough's step repeated) doubled the person's
        # crops and made a training round of them: the same photo is taken once
        held = self.gallery.crop_digests(name)
        outcome.existed = bool(held)
        for image in images:
            if max_images is not None and len(crops) >= max_images:
                break
            try:
                face = self.pipeline.embed_image_file(image)
            except (ImageReadError, NoFaceError) as exc:
                if not skip_bad:
                    raise
                reason = str(exc)
                outcome.skipped.append((image, reason))
                log.info("enrol %s: skipped %s: %s", name, image, reason)
                if progress:
                    progress(image, reason)
                continue
            digest = crop_digest(face.crop)
            if digest in held:
                outcome.already.append(image)
                if progress:
                    progress(image, None)
                continue
            held.add(digest)
            if face.others:
                outcome.group_photos.append((image, _box(face)))
            crops.append(face.crop)
            vectors.append(face.embedding)
            outcome.added.append(image)
            if progress:
                progress(image, None)
        self._settle_group_photos(outcome, crops, vectors, skip_bad)
        if not crops:
            return outcome
        # the served model's vectors once: the checks and the store all use them
        served, tag = self._served_vectors(crops, vectors)
        served = self._drop_not_the_person(outcome, crops, served, tag, skip_bad)
        if crops:
            outcome.looks_like = self._looks_like(name, served, tag)
            stored = self._store(name, crops, served, tag, [p.name for p in outcome.added])
            outcome.person_id = stored.person_id
            # stored meanwhile by another enrolment of the same photos (it runs at once)
            raced = [image for image, new in zip(outcome.added, stored.new, strict=True)
                     if not new]
            outcome.added = [image for image in outcome.added if image not in raced]
            outcome.already.extend(raced)
            # a picked face already held was not enrolled: no note says it was (helper-61)
            outcome.picked = [(image, box) for image, box in outcome.picked if image not in raced]
        return outcome

    def enroll_crops(self, name: str, crops: list[np.ndarray], base_vectors: list[np.ndarray],
                     sources: Sequence[str | None]) -> EnrolledCrops:
        """Store aligned crops for ``name`` with embeddings of the model serving now
        (``base_vectors`` come from the pipeline's pretrained embedder): the person's id
        and the crops' ids (``Gallery.enroll_crops``: a crop stored before is not again)."""
        vectors, tag = self._served_vectors(crops, base_vectors)
        return self._store(name, crops, vectors, tag, sources)

    def look_alike(self, name: str, crops: list[np.ndarray],
                   base_vectors: list[np.ndarray]) -> Match | None:
        """Someone enrolled under another name whom these crops look like (the API's
        enrolment says so as the CLI's and the kiosk's do), or None."""
        served, tag = self._served_vectors(crops, base_vectors)
        return self._looks_like(name, served, tag)

    def _store(self, name: str, crops: list[np.ndarray], vectors: np.ndarray, tag: str,
               sources: Sequence[str | None]) -> EnrolledCrops:
        wrong = not_the_person(vectors, self.gallery.person_vectors(name, tag))
        if wrong:  # every way in (the API too): never another's face under this name
            raise NotThePerson(f"a photo {not_the_person_reason(name, wrong[0][1])}")
        ids = self.gallery.enroll_crops(name, crops, vectors, tag, sources=sources)
        self.engine.refresh_gallery()
        return ids

    def _served_vectors(self, crops: list[np.ndarray], base_vectors: list[np.ndarray]
                        ) -> tuple[np.ndarray, str]:
        state = self.engine.state  # one read: vectors and their version tag agree
        vectors = base_vectors
        if state.embedder is not self.pipeline.embedder:  # a federated model serves
            vectors = list(state.embedder.embed(crops))
        return np.stack(vectors), state.tag

    def _drop_not_the_person(self, outcome: EnrolOutcome, crops: list[np.ndarray],
                             served: np.ndarray, tag: str, skip_bad: bool) -> np.ndarray:
        """Photos to add to an enrolled person that are someone else's: skipped (said
        why), or with ``skip_bad`` off refused, nothing enrolled. The served vectors of
        the photos kept."""
        wrong = not_the_person(served, self.gallery.person_vectors(outcome.name, tag))
        if wrong and not skip_bad:
            i, score = wrong[0]
            raise NotThePerson(f"{outcome.added[i]} {not_the_person_reason(outcome.name, score)}"
                               "; nothing was enrolled")
        outcome.skipped += [(outcome.added[i], not_the_person_reason(outcome.name, score))
                            for i, score in wrong]
        for i, _ in reversed(wrong):
            del crops[i], outcome.added[i]
        return np.delete(served, [i for i, _ in wrong], axis=0)

    def _settle_group_photos(self, outcome: EnrolOutcome, crops: list[np.ndarray],
                             vectors: list[np.ndarray], skip_bad: bool) -> None:
        """A group photo beside photos of the person alone, in this batch or enrolled
        before: the face taken is the one that looks like those (the largest may be
        someone else's: helper-49's folder enrolled Tony Blair as Kofi Annan, Kofi beside
        him), and the photo is skipped when none does. Only a group photo with nothing to
        check it against keeps its largest face, with a warning (the person's only photo,
        or all of them group photos, and nothing enrolled). Compared in the served
        model's space, where the stored photos are. With ``skip_bad`` off a photo none of
        whose faces is the person's is refused, nothing enrolled."""
        group = {image for image, _ in outcome.group_photos}
        if not group:
            return
        served, tag = self._served_vectors(crops, vectors)
        alone = [served[i] for i, image in enumerate(outcome.added) if image not in group]
        alone += list(self.gallery.person_vectors(outcome.name, tag))
        if not alone:
            return
        drop = []
        for image, _ in outcome.group_photos:
            i = outcome.added.index(image)
            if face_like_the_rest([served[i]], alone) is not None:
                continue  # the largest face is the person's: nothing to say
            faces = self.pipeline.process(read_image(image))
            seen, seen_tag = self._served_vectors([f.crop for f in faces],
                                                  [f.embedding for f in faces])
            pick = face_like_the_rest(list(seen), alone) if seen_tag == tag else None
            if pick is None:
                reason = f"none of its {len(faces)} faces looks like {outcome.name}'s other photos"
                if not skip_bad:
                    raise NotThePerson(f"{image}: {reason}; nothing was enrolled")
                drop.append(i)
                outcome.skipped.append((image, reason))
                continue
            crops[i], vectors[i] = faces[pick].crop, faces[pick].embedding
            outcome.picked.append((image, _box(faces[pick])))
        for i in sorted(drop, reverse=True):
            del crops[i], vectors[i], outcome.added[i]
        outcome.group_photos = []  # each one checked

    def _looks_like(self, name: str, vectors: np.ndarray, tag: str) -> Match | None:
        """The best match of the photos (their served vectors) among people enrolled
        under another name, at the served threshold: a typo of a name, or one person's
        folder under two names, made a second person without a word (helper-47; the
        kiosk warned)."""
        try:
            matches = self.gallery.identify_many(vectors, tag, self.threshold)
        except GalleryError:  # nobody enrolled under this model yet: no one to look like
            return None
        return enrolled_as_another(matches, name)


def _box(face: RecognisedFace) -> Box:
    x, y, w, h = (round(v) for v in face.face.box)
    return x, y, w, h


def people_folders(root: Path) -> list[Path]:
    """One sub-folder per person (sorted); FedFaceError if ``root`` is not such a folder."""
    if not root.is_dir():
        raise EnrolInputError(f"{root} is not a directory",
                           "pass a folder with one sub-folder of photos per person")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EnrolInputError(f"{root} has no sub-folders",
                           "put each person's photos in a sub-folder named after them")
    return folders
