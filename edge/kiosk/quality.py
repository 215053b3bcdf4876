"""Quality checks of enrolment shots and uploads: one face, big enough, not blurred.

Every check returns a ``ShotVerdict`` whose ``message`` is what the staff member reads
next to the shot, so a rejection always says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.vision.pipeline import RecognisedFace


@dataclass(frozen=True)
class ShotVerdict:
    ok: bool
    message: str
    face: RecognisedFace | None = field(default=None, repr=False)
    sharpness: float = 0.0
    face_px: int = 0


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey aligned crop (low: blurred or motion-smeared).

    Measured on the aligned 112x112 crop rather than the frame so the figure does not
    depend on the camera resolution or how far away the person stands.
    """
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def judge_faces(faces: list[RecognisedFace], min_face_px: int, min_sharpness: float,
                single_face: bool = True) -> ShotVerdict:
    """Check the faces found in one shot; with ``single_face`` exactly one must be there."""
    if not faces:
        return ShotVerdict(False, "No face found. Face the camera, in good light.")
    if single_face and len(faces) > 1:
        return ShotVerdict(False, f"{len(faces)} faces in view. Only the person being "
                                  "enrolled may be in front of the camera.")
    face = max(faces, key=lambda f: f.face.area)
    size = round(min(face.face.box[2], face.face.box[3]))
    if size < min_face_px:
        return ShotVerdict(False, f"Face too small ({size} px, need {min_face_px} px). "
                                  "Step closer to the camera.", face_px=size)
    sharp = sharpness(face.crop)
    if sharp < min_sharpness:
        return ShotVerdict(False, f"Image blurred (sharpness {sharp:.0f}, need "
                                  f"{min_sharpness:.0f}). Hold still and try again.",
                           sharpness=sharp, face_px=size)
    return ShotVerdict(True, f"Good shot (face {size} px, sharpness {sharp:.0f}).", face,
                       sharpness=sharp, face_px=size)


def decode_upload(data: bytes) -> np.ndarray | None:
    """BGR image decoded from uploaded bytes, or None if they are not an image.

    The type is decided by decoding, never by the file name or the declared MIME type.
    """
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 16:
        return None
    return np.asarray(image)
