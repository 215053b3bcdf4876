"""Quality checks of enrolment shots and uploads: one face, big enough, not blurred.

Every check returns a ``ShotVerdict`` whose ``message`` is what the staff member reads
next to the shot, so a rejection always says what to change.

Which face of an uploaded photo with several faces is enrolled (``choose_faces``): the
largest may be a stranger's (helper-49: Tony Blair enrolled as Kofi Annan, Kofi beside
him), so it is the one like the person's other photos, those uploaded alone with it and,
for someone already enrolled, the stored ones (helper-56: a group photo added to an
enrolled person was checked against nothing). Only with neither is the largest taken
unchecked, and staff are told. Faces are compared in the served model's space, where
the stored photos are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.errors import ImageReadError
from edge.gallery.match import face_like_the_rest
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


Embed = Callable[[list[np.ndarray]], tuple[np.ndarray, str]]  # crops -> (vectors, tag)
Stored = Callable[[str], np.ndarray]  # a model version tag -> the person's stored vectors


@dataclass
class Choice:
    faces: list[tuple[str, list[RecognisedFace]]] = field(default_factory=list)  # per photo
    group_photos: list[str] = field(default_factory=list)  # several faces, largest unchecked
    left_out: list[str] = field(default_factory=list)  # several faces, none like the person
    picked: list[str] = field(default_factory=list)  # several faces, the one like them taken


def choose_faces(found: list[tuple[str, list[RecognisedFace]]], embed: Embed,
                 stored: Stored) -> Choice:
    """Each photo's face(s) to judge: a photo of one face as it is; a group photo's face
    like the person's (or, with nothing to compare with, all its faces: the largest is
    taken); a group photo with none like them left out."""
    choice = Choice()
    if all(len(faces) == 1 for _, faces in found):
        choice.faces = list(found)
        return choice
    lone = [faces[0].crop for _, faces in found if len(faces) == 1]
    crowd = [face.crop for _, faces in found if len(faces) > 1 for face in faces]
    vectors, tag = embed(lone + crowd)
    alone = list(vectors[:len(lone)]) + list(stored(tag))
    crowd_vectors = iter(vectors[len(lone):])
    for filename, faces in found:
        if len(faces) == 1:
            choice.faces.append((filename, faces))
            continue
        seen = [next(crowd_vectors) for _ in faces]
        if not alone:
            choice.group_photos.append(filename)
            choice.faces.append((filename, faces))
            continue
        pick = face_like_the_rest(seen, alone)
        if pick is None:
            choice.left_out.append(filename)
            continue
        choice.picked.append(filename)
        choice.faces.append((filename, [faces[pick]]))
    return choice
