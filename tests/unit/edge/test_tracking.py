"""Face tracking and view quality: the tracker keeps ids through skipped frames and two
people crossing; the view quality prefers big, sharp, frontal faces (real LFW crops)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.tracking.quality import frontal_score, sharpness_score, view_quality
from edge.tracking.tracker import FaceTracker, iou_matrix
from edge.vision.align import align_face
from edge.vision.detect import Face, FaceDetector
from edge.vision.pipeline import read_image
from models.registry import model_path


def face_at(x: float, y: float, side: float = 80.0) -> Face:
    landmarks = np.array([[x + 0.3 * side, y + 0.4 * side], [x + 0.7 * side, y + 0.4 * side],
                          [x + 0.5 * side, y + 0.6 * side], [x + 0.35 * side, y + 0.8 * side],
                          [x + 0.65 * side, y + 0.8 * side]], np.float32)
    return Face((x, y, side, side), landmarks, 0.9)


def test_iou_of_boxes() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], float)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_two_people_crossing_keep_their_tracks_with_detection_on_every_third_frame() -> None:
    """A walks right, B walks left along the same line, 12 px per frame: at the crossing
    their boxes overlap almost fully; the constant-velocity prediction keeps them apart."""
    tracker = FaceTracker(max_missing_s=1.0)
    ids: dict[str, set[int]] = {"A": set(), "B": set()}
    for frame in range(0, 60, 3):
        a, b = face_at(20 + 12 * frame, 100), face_at(620 - 12 * frame, 104)
        step = tracker.update([a, b], frame, frame / 30)
        for track, face in step.matched:
            ids["A" if face is a else "B"].add(track.track_id)
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1 and ids["A"] != ids["B"]


def test_a_track_ends_after_it_is_unseen_for_max_missing_seconds() -> None:
    tracker = FaceTracker(max_missing_s=1.0)
    first = tracker.update([face_at(100, 100)], 0, 0.0).started[0]
    assert tracker.update([], 15, 0.5).ended == []
    step = tracker.update([], 31, 1.04)
    assert step.ended == [first] and tracker.tracks == []
    assert tracker.update([face_at(100, 100)], 32, 1.07).started[0].track_id != first.track_id


def test_frontal_score_falls_as_the_nose_moves_towards_one_eye() -> None:
    frontal = face_at(0, 0).landmarks
    turned = frontal.copy()
    turned[2, 0] += 20  # nose 20 px towards the left eye (eye distance 32 px)
    assert frontal_score(frontal) == pytest.approx(1.0)
    assert frontal_score(turned) < 0.5
    rolled = frontal @ np.array([[0.8, -0.6], [0.6, 0.8]], np.float32)  # in-plane rotation
    assert frontal_score(rolled) == pytest.approx(1.0, abs=1e-5)


def test_view_quality_prefers_sharp_big_faces_on_a_real_photo(lfw_dir: Path) -> None:
    detector = FaceDetector(model_path("yunet"))
    image = read_image(lfw_dir / "Colin_Powell" / "Colin_Powell_0001.jpg")
    face = detector.detect(image)[0]
    crop = align_face(image, face.landmarks)
    blurred = cv2.GaussianBlur(crop, (0, 0), 3)
    assert sharpness_score(blurred) < 0.5 * sharpness_score(crop)
    small = cv2.resize(cv2.resize(image, (80, 80)), (250, 250))  # seen from far away
    small_face = detector.detect(small)[0]
    sharp = view_quality(face, crop).score
    assert view_quality(face, blurred).score < sharp
    assert view_quality(Face(tuple(v * 0.32 for v in face.box), face.landmarks, face.score),
                        crop).score < sharp
    assert sharpness_score(align_face(small, small_face.landmarks)) < sharpness_score(crop)
