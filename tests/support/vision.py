"""Helpers for the vision tests: real LFW images and aligned crops (not fixtures)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.vision.align import align_face
from edge.vision.detect import FaceDetector
from edge.vision.pipeline import read_image

# A spread of people (varied pose, age, lighting), first image of each.
PEOPLE = (
    "Aaron_Peirsol", "Angelina_Jolie", "Colin_Powell", "George_W_Bush", "Gloria_Macapagal_Arroyo",
    "Hugo_Chavez", "Jennifer_Capriati", "Junichiro_Koizumi", "Laura_Bush", "Serena_Williams",
    "Tony_Blair", "Vladimir_Putin",
)  # fmt: skip


def lfw_image_paths(
    lfw_dir: Path, people: tuple[str, ...] = PEOPLE, per_person: int = 1
) -> list[Path]:
    paths: list[Path] = []
    for name in people:
        paths += [lfw_dir / name / f"{name}_{i:04d}.jpg" for i in range(1, per_person + 1)]
    return paths


def aligned_crops(
    lfw_dir: Path, detector: FaceDetector, people: tuple[str, ...] = PEOPLE
) -> np.ndarray:
    crops = []
    for path in lfw_image_paths(lfw_dir, people):
        image = read_image(path)
        faces = detector.detect(image)
        assert faces, f"no face in {path}"
        crops.append(align_face(image, faces[0].landmarks))
    return np.stack(crops)


def group_photo(lfw_dir: Path, path: Path, beside: str = "Hugo_Chavez",
                largest: str = "Serena_Williams") -> Path:
    """``largest``'s photo with a smaller one of ``beside`` next to it: the largest face
    is ``largest``'s."""
    left = cv2.imread(str(lfw_dir / largest / f"{largest}_0001.jpg"))
    right = cv2.resize(cv2.imread(str(lfw_dir / beside / f"{beside}_0005.jpg")), None,
                       fx=0.8, fy=0.8)
    pair = np.zeros((left.shape[0], left.shape[1] + right.shape[1], 3), np.uint8)
    pair[:, :left.shape[1]] = left
    pair[:right.shape[0], left.shape[1]:] = right
    cv2.imwrite(str(path), pair)
    return path
