"""The LFW faces the benches read: where they are, and aligned crops of a few people."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from models.registry import model_path


def default_lfw_dir() -> Path:
    root = os.environ.get("FEDFACE_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base / "lfw"


def enrolment_crops(lfw_dir: Path, people: int, per_person: int) -> dict[str, list[np.ndarray]]:
    detector = cv2.FaceDetectorYN.create(str(model_path("yunet")), "", (250, 250), 0.5)
    recogniser = cv2.FaceRecognizerSF.create(str(model_path("sface")), "")
    chosen = sorted(p.name for p in lfw_dir.iterdir() if len(list(p.glob("*.jpg"))) >= 3)
    rng = np.random.default_rng(0)
    out: dict[str, list[np.ndarray]] = {}
    for person in rng.choice(chosen, people, replace=False):
        for path in sorted((lfw_dir / person).glob("*.jpg"))[:per_person]:
            img = cv2.imread(str(path))
            if img is None:
                raise FileNotFoundError(f"cannot read {path}")
            _, faces = detector.detect(img)
            if faces is not None and len(faces):
                out.setdefault(str(person), []).append(recogniser.alignCrop(img, faces[0]))
    return out
