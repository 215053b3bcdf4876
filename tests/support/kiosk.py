"""Shared pieces of the kiosk tests: a frame folder of real LFW faces and a kiosk factory.

The frame folder plays as the kiosk's camera (``dir:...?fps=N&loop=1``): ``A_FRAMES``
photos of PERSON_A (enrolled during the tests) followed by ``B_FRAMES`` photos of
PERSON_B (never enrolled: the unknown face), looping. Only photos with exactly one
sharp, large face are used, so a camera shot taken on an A frame passes the checks.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import EdgeSettings
from edge.kiosk import Kiosk, KioskSettings, build_kiosk
from edge.kiosk.auth import PasswordStore
from edge.kiosk.quality import sharpness
from edge.vision.pipeline import FacePipeline, read_image

PERSON_A = "George_W_Bush"
PERSON_B = "Serena_Williams"
A_FRAMES = 8
B_FRAMES = 4
CYCLE = A_FRAMES + B_FRAMES
KIOSK_PASSWORD = "correct horse battery staple"


def usable_images(pipeline: FacePipeline, lfw_dir: Path, person: str, count: int) -> list[Path]:
    found = []
    for path in sorted((lfw_dir / person).iterdir()):
        faces = pipeline.process(read_image(path))
        if len(faces) == 1 and min(faces[0].face.box[2:]) >= 70 and \
                sharpness(faces[0].crop) >= 70:
            found.append(path)
        if len(found) == count:
            return found
    raise AssertionError(f"only {len(found)} usable photos of {person} in {lfw_dir}")


def build_frames(folder: Path, pipeline: FacePipeline, lfw_dir: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = (usable_images(pipeline, lfw_dir, PERSON_A, A_FRAMES)
              + usable_images(pipeline, lfw_dir, PERSON_B, B_FRAMES))
    for index, path in enumerate(images):
        shutil.copy(path, folder / f"{index:04d}.jpg")
    return folder


def source_uri(frames: Path, fps: float, loop: bool = True) -> str:
    return f"dir:{frames}?fps={fps:g}" + ("&loop=1" if loop else "")


def make_kiosk(data_dir: Path, frames: Path, pipeline: FacePipeline, fps: float = 6.0,
               clock: Callable[[], float] = time.time, loop: bool = True,
               **settings: object) -> Kiosk:
    """A kiosk on a free loopback port over the frame folder (not started)."""
    PasswordStore(data_dir).set(KIOSK_PASSWORD)
    edge = EdgeSettings(data_dir=data_dir)
    # per frame unless asked: these tests show single frames (per_visit=True for visits)
    kiosk_settings = KioskSettings.from_mapping({"port": 0, "per_visit": False, **settings})
    return build_kiosk(edge, kiosk_settings, source_uri(frames, fps, loop), pipeline=pipeline,
                       clock=clock)


@pytest.fixture(scope="session")
def kiosk_pipeline() -> FacePipeline:
    return FacePipeline.from_model_dir(threads=1)


@pytest.fixture(scope="session")
def kiosk_frames(tmp_path_factory: pytest.TempPathFactory, kiosk_pipeline: FacePipeline,
                 lfw_dir: Path) -> Path:
    return build_frames(tmp_path_factory.mktemp("kiosk-frames"), kiosk_pipeline, lfw_dir)
