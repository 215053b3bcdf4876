"""Quality checks of enrolment shots and uploads: one face, big enough, not blurred.

Every check returns a ``ShotVerdict`` whose ``message`` is what the staff member reads
next to the shot, so a rejection always says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.errors import ImageReadError
from edge.vision.image_header import ImageTooLarge, check_header, decode_image
from edge.vision.pipeline import RecognisedFace


class UploadRefused(ValueError):
    """An uploaded photo that is not used; the message is shown to the staff."""


NOT_AN_IMAGE = "not an image (use a photo: JPEG, PNG, WebP...)."


@dataclass(frozen=True)
class ShotVerdict:
    ok: bool
    message: str
    face: RecognisedFace | None = field(default=None, repr=False)
    sharpness: float = 0.0
    face_px: int = 0
    warning: bool = False  # taken, but staff should look (the face is someone enrolled)


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


def check_upload(data: bytes, max_pixels: int, filename: str) -> None:
    """``UploadRefused`` (the staff's message) unless the header says the bytes are an
    image of at most ``max_pixels`` (read before anything is decoded, so a small file
    that would decode to gigabytes costs nothing: ``edge.vision.image_header``).

    The type is decided by the content, never by the file name or the declared MIME type.
    """
    try:
        check_header(data, max_pixels, filename)
    except ImageTooLarge as exc:
        header = exc.header
        raise UploadRefused(f"{filename} is {header.width}x{header.height} pixels "
                            f"({header.pixels / 1e6:.0f} MP); photos of at most "
                            f"{max_pixels / 1e6:g} MP are accepted. Scale it down and upload "
                            "it again.") from None
    except ImageReadError:
        raise UploadRefused(f"{filename} is {NOT_AN_IMAGE}") from None


def decode_upload(data: bytes, max_pixels: int, filename: str) -> np.ndarray:
    """BGR image decoded from uploaded bytes checked by ``check_upload`` first;
    ``UploadRefused`` if they cannot be used."""
    check_upload(data, max_pixels, filename)
    try:
        image = decode_image(data, max_pixels, filename)
    except ImageReadError:
        raise UploadRefused(f"{filename} is {NOT_AN_IMAGE}") from None
    if min(image.shape[:2]) < 16:
        raise UploadRefused(f"{filename} is too small to show a face "
                            f"({image.shape[1]}x{image.shape[0]} pixels).")
    return image
