"""The kiosk tests' camera (tests/support/kiosk.py) shows what they assume it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.vision.pipeline import FacePipeline, read_image
from tests.support.kiosk import (
    A_FRAMES,
    CYCLE,
)


def test_frame_folder_has_one_face_per_frame_and_two_people(
    kiosk_frames: Path, kiosk_pipeline: FacePipeline
) -> None:
    frames = sorted(kiosk_frames.iterdir())
    assert len(frames) == CYCLE
    embeddings = []
    for path in frames:
        faces = kiosk_pipeline.process(read_image(path))
        assert len(faces) == 1, path
        embeddings.append(faces[0].embedding)
    vectors = np.stack(embeddings)
    a, b = vectors[:A_FRAMES], vectors[A_FRAMES:]
    # the tests rely on A being one person, B another, and B never matching A
    assert (a @ a.T).min() > 0.45
    assert (b @ b.T).min() > 0.4
    assert (a @ b.T).max() < 0.35
