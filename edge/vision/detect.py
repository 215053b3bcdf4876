"""Face detection with YuNet (cv2.FaceDetectorYN): boxes, 5 landmarks and a score.

Thresholds:
- ``score_threshold`` (0-1, default 0.8): YuNet's face confidence. Lower finds more
  (profile, blurred, small faces) at the price of false alarms on faces in posters or
  patterned backgrounds; 0.8 is what OpenCV Zoo ships and found a face in every LFW
  image. For enrolment photos use the default; for a kiosk camera 0.6-0.7 if faces at
  an angle are missed.
- ``nms_threshold`` (IoU, default 0.3): overlapping boxes above this IoU are merged.

Speed: YuNet's cost grows with its input area (one core: 640x480 22 ms, 320x240 4.7 ms).
Frames whose long side exceeds ``max_side`` (default 320) are downscaled to fit before
detection and the results mapped back to frame pixels; alignment then crops from the
full-resolution frame, so the crop keeps its detail. Accuracy is kept: LFW pairs pasted
into 640x480 frames (first two folds, ``bench.edge.lfw_verification --canvas``) scored 99.75%
detected at 320 px vs 99.42% at full size. A face must be roughly 20 px wide in a
640x480 frame to be found at 320 (about 10 px at the detector's scale); raise
``max_side`` (or pass None) for far-away faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.8
DEFAULT_NMS_THRESHOLD = 0.3
DEFAULT_MAX_SIDE = 320


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in pixels of the frame passed to ``detect``.

    ``box`` is (x, y, w, h). ``landmarks`` is 5x2 float32 in YuNet's order: right eye,
    left eye, nose tip, right mouth corner, left mouth corner (the subject's right, i.e.
    the eye on the image's left). ``score`` is YuNet's confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)


class FaceDetector:
    """YuNet wrapper that accepts frames of any size.

    Not thread-safe (cv2.FaceDetectorYN keeps per-input-size state): use one per thread.
    """

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = DEFAULT_NMS_THRESHOLD,
        top_k: int = 5000,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels or None, got {max_side}")
        self.model_path = Path(model_path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.max_side = max_side
        self._input_size = (320, 320)
        self._yunet = cv2.FaceDetectorYN.create(
            str(self.model_path), "", self._input_size, score_threshold, nms_threshold, top_k
        )

    def _scaled(self, bgr: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = bgr.shape[:2]
        if self.max_side is None or max(height, width) <= self.max_side:
            return bgr, 1.0
        scale = self.max_side / float(max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # INTER_AREA averages the pixels it drops: fewer aliasing artefacts than linear.
        return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), scale

    def detect(self, bgr: np.ndarray, score_threshold: float | None = None) -> list[Face]:
        """Faces in a BGR uint8 frame, best score first.

        ``score_threshold`` overrides the detector's threshold for this call only (the
        enrolment fallback uses it to retry a photo at a lower confidence).
        """
        if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            shape = None if bgr is None else (bgr.shape, bgr.dtype)
            raise ValueError(f"detect expects a BGR uint8 HxWx3 image, got {shape}")
        image, scale = self._scaled(bgr)
        size = (image.shape[1], image.shape[0])
        if size != self._input_size:
            self._yunet.setInputSize(size)
            self._input_size = size
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if threshold != self.score_threshold:
            self._yunet.setScoreThreshold(threshold)
        try:
            _, raw = self._yunet.detect(image)
        finally:
            if threshold != self.score_threshold:
                self._yunet.setScoreThreshold(self.score_threshold)
        if raw is None:
            return []
        faces = [_to_face(row, scale) for row in raw]
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


def _to_face(row: np.ndarray, scale: float) -> Face:
    values = row.astype(np.float64) / scale
    x, y, w, h = (float(v) for v in values[:4])
    landmarks = values[4:14].reshape(5, 2).astype(np.float32)
    return Face(box=(x, y, w, h), landmarks=landmarks, score=float(row[14]))
