"""The recognition pipeline of one frame: detect -> align -> embed (no torch here, ever).

``FacePipeline.process`` returns every face with its crop and embedding, and keeps the
per-stage timings of the last frame for the benchmarks and the kiosk's status page.
``embed_image_file`` is the enrolment path: one photo, one face, clear typed errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.errors import ImageReadError, NoFaceError
from edge.vision.align import align_face
from edge.vision.detect import Face, FaceDetector
from edge.vision.embed import Embedder
from edge.vision.image_header import DEFAULT_MAX_PIXELS, decode_image
from models.registry import model_path, optimised_sface_path

log = logging.getLogger(__name__)

# Enrolment photos are posed: if nothing passes the detector's threshold, retry once at
# this lower confidence and keep the largest face rather than reject a usable photo.
ENROL_FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class RecognisedFace:
    face: Face
    crop: np.ndarray = field(repr=False)  # 112x112x3 BGR uint8
    embedding: np.ndarray = field(repr=False)  # (128,) float32, unit length
    model_version: str = ""
    others: int = 0  # other faces in the photo (embed_image takes the largest)


@dataclass
class StageTimings:
    """Seconds spent per stage on the last frame (align and embed summed over faces)."""

    detect: float = 0.0
    align: float = 0.0
    embed: float = 0.0

    @property
    def total(self) -> float:
        return self.detect + self.align + self.embed


class FaceEmbedder(Protocol):
    """``edge.vision.embed.Embedder`` (one SFace session) or
    ``edge.serving.split_model.SplitEmbedder``."""

    @property
    def version(self) -> str: ...

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray: ...


def detect_align_embed(
    detector: FaceDetector, embedder: FaceEmbedder, bgr: np.ndarray
) -> tuple[list[Face], list[np.ndarray], np.ndarray, StageTimings]:
    """The frame path shared by the pipeline and the hot-swapping engine (which passes
    the embedder of the serving state it read once for the whole frame)."""
    t0 = time.perf_counter()
    faces = detector.detect(bgr)
    t1 = time.perf_counter()
    crops = [align_face(bgr, face.landmarks) for face in faces]
    t2 = time.perf_counter()
    embeddings = embedder.embed(crops) if crops else np.zeros((0, 128), np.float32)
    t3 = time.perf_counter()
    return faces, crops, embeddings, StageTimings(detect=t1 - t0, align=t2 - t1, embed=t3 - t2)


class FacePipeline:
    def __init__(self, detector: FaceDetector, embedder: Embedder) -> None:
        self.detector = detector
        self.embedder = embedder
        self.last_timings = StageTimings()

    @classmethod
    def from_model_dir(
        cls, model_dir: Path | None = None, threads: int = 1, max_side: int | None = 320
    ) -> FacePipeline:
        """Pipeline from the verified model cache (``ModelError`` if models are missing).

        ``threads`` also caps OpenCV's own pool (process-wide), so the detector does not
        spread over cores the caller wanted to keep free.
        """
        cv2.setNumThreads(threads)
        detector = FaceDetector(model_path("yunet", model_dir), max_side=max_side)
        embedder = Embedder(optimised_sface_path(model_dir), threads=threads)
        return cls(detector, embedder)

    def process(self, bgr: np.ndarray) -> list[RecognisedFace]:
        """Detect, align and embed every face in a BGR frame (best detection first)."""
        faces, crops, embeddings, self.last_timings = detect_align_embed(
            self.detector, self.embedder, bgr)
        version = self.embedder.version
        return [
            RecognisedFace(face=f, crop=c, embedding=e, model_version=version)
            for f, c, e in zip(faces, crops, embeddings, strict=True)
        ]

    def embed_image(self, bgr: np.ndarray, source: str = "image") -> RecognisedFace:
        """The largest face of a photo; falls back to a lower threshold once."""
        faces = self.detector.detect(bgr)
        if not faces:
            faces = self.detector.detect(bgr, score_threshold=ENROL_FALLBACK_THRESHOLD)
            if faces:
                log.info("%s: face found only at the fallback threshold", source)
        if not faces:
            raise NoFaceError(
                f"no face found in {source}",
                "use a photo with one frontal, well-lit face at least ~40 px wide",
            )
        face = max(faces, key=lambda f: f.area)
        crop = align_face(bgr, face.landmarks)
        embedding = self.embedder.embed_one(crop)
        return RecognisedFace(face, crop, embedding, self.embedder.version, len(faces) - 1)

    def embed_image_file(self, path: Path) -> RecognisedFace:
        """Enrolment helper: ``ImageReadError`` / ``NoFaceError`` on a bad photo."""
        return self.embed_image(read_image(path), source=str(path))


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A BGR uint8 image from disk, or ``ImageReadError`` saying why not.

    Its size is read from the header before decoding and refused over ``max_pixels``
    (``edge.vision.image_header``): a small file can decode to gigabytes.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {path} does not exist or is not a file", "check the path")
    try:
        data = path.read_bytes()  # imread cannot report why it failed
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc}", "check file permissions") from exc
    if not data:
        raise ImageReadError(f"{path} is empty", "use a JPEG or PNG photo")
    return decode_image(data, max_pixels, str(path))
