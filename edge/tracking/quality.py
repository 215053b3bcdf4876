"""How good a view of a face is, from what the detector already gives (no extra model).

Three factors in [0, 1], multiplied (a view must be good on all three):
- size: the face box's width against SFace's 112 px input (a 40 px face is upscaled
  almost threefold and loses the detail SFace relies on);
- sharpness: variance of the Laplacian of the aligned crop, the usual focus measure;
  motion blur and defocus flatten it;
- frontal: yaw judged from the five landmarks. On a frontal face the nose tip sits
  half way between the eyes (and between the mouth corners); as the head turns it moves
  towards one side. Roll does not count: alignment rotates it away.
The detector's own confidence multiplies in as well: occluded faces score lower.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.align import CROP_SIZE
from edge.vision.detect import Face

SHARPNESS_HALF = 60.0  # Laplacian variance at which sharpness scores 0.5
FULL_SIZE_PX = float(CROP_SIZE)


@dataclass(frozen=True)
class ViewQuality:
    size: float
    sharpness: float
    frontal: float
    detection: float

    @property
    def score(self) -> float:
        return self.size * self.sharpness * self.frontal * self.detection


def frontal_score(landmarks: np.ndarray) -> float:
    """1 for a frontal face, towards 0 as the head turns (five YuNet landmarks)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    right_eye, left_eye, nose, right_mouth, left_mouth = points
    eye_axis = left_eye - right_eye
    eye_distance = float(np.linalg.norm(eye_axis))
    if eye_distance < 1e-6:
        return 0.0
    axis = eye_axis / eye_distance
    eyes_mid = (right_eye + left_eye) / 2.0
    mouth_mid = (right_mouth + left_mouth) / 2.0
    # the nose's offset along the eye axis, from the eyes' and the mouth's midpoints
    offset = abs(float(np.dot(nose - eyes_mid, axis))) + abs(float(np.dot(nose - mouth_mid,
                                                                            axis)))
    return float(max(0.0, 1.0 - offset / eye_distance))


def sharpness_score(crop: np.ndarray) -> float:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    variance = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return variance / (variance + SHARPNESS_HALF)


def view_quality(face: Face, crop: np.ndarray) -> ViewQuality:
    """The quality of one detected face given its aligned 112x112 crop."""
    size = min(1.0, face.box[2] / FULL_SIZE_PX)
    return ViewQuality(size=size, sharpness=sharpness_score(crop),
                       frontal=frontal_score(face.landmarks), detection=float(face.score))


THUMB_SIDE = 16  # a view's grey thumbnail, for telling an abrupt change of face


def view_thumbnail(crop: np.ndarray) -> np.ndarray:
    """The aligned crop as a normalised 16x16 grey vector: two views of one face
    correlate highly (edge.tracking.visits' CHANGE_BELOW)."""
    grey = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (THUMB_SIDE, THUMB_SIDE),
                      interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    grey -= grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-6)
