"""Shared set-up of the hot-swap tests: a box data dir with real LFW people enrolled.

Built once per test session (enrolment through the real pipeline, trunk features and
the tail graph cached by a first HotSwapper) and copied per test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edge.gallery.store import DB_FILENAME, Gallery
from edge.serving.hot_swap import HotSwapper
from edge.serving.recognizer import Recognizer, images_in
from edge.vision.pipeline import FacePipeline
from models.federated_parts import DEFAULT_PART, FederatedPart, get_part
from models.registry import optimised_sface_path

PART = get_part(DEFAULT_PART)  # the part the product swaps by default
PEOPLE = 10  # ids 5 and 10: the two calibration people a threshold needs
CROPS_PER_PERSON = 3


def lfw_people(lfw_dir: Path, n: int, min_images: int) -> list[Path]:
    return [p for p in sorted(lfw_dir.iterdir())
            if len(list(p.glob("*.jpg"))) >= min_images][:n]


def build_box(lfw_dir: Path, data_dir: Path) -> Path:
    """Enrol PEOPLE x CROPS_PER_PERSON real faces; warm the swapper's caches."""
    pipeline = FacePipeline.from_model_dir(threads=1)
    with Gallery.open(data_dir) as gallery:
        recognizer = Recognizer(pipeline, gallery, 0.40)
        for person in lfw_people(lfw_dir, PEOPLE, CROPS_PER_PERSON + 2):
            recognizer.enroll_images(person.name, images_in(person)[:CROPS_PER_PERSON])
        recognizer.engine.close()
    swapper = open_swapper(data_dir)
    swapper.assets.warm()
    swapper.engine.close()
    return data_dir


def copy_box(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def open_swapper(data_dir: Path, part: FederatedPart = PART, **kwargs: object) -> HotSwapper:
    return HotSwapper(optimised_sface_path(), part, data_dir / "models",
                      data_dir / DB_FILENAME, **kwargs)  # type: ignore[arg-type]


def perturbed(base: np.ndarray, seed: int, scale: float = 1e-3) -> np.ndarray:
    """A plausible federated result: the weights moved a little."""
    rng = np.random.default_rng(seed)
    return (base * (1 + scale * rng.standard_normal(base.shape))).astype(np.float32)


def wrecked(part: FederatedPart, base: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """The part's first tensor (conv14: the 1x1 conv weights; embed_bn: the conv_14
    batch-norm scale) zeroed, or replaced by zero-mean noise of the same overall scale
    (root mean square)."""
    out = base.copy()
    n = int(np.prod(part.initializers[0][1]))  # the first tensor leads the part's vector
    if how == "zero":
        out[:n] = 0.0
    else:
        rng = np.random.default_rng(seed)
        rms = float(np.sqrt(np.mean(np.square(base[:n], dtype=np.float64))))
        out[:n] = rng.standard_normal(n).astype(np.float32) * rms
    return out


def template_box(base_temp: Path, lfw_dir: Path) -> Path:
    """The session's enrolled box (built on first use; test modules share it)."""
    template = base_temp / "hot-swap-template"
    if not (template / "ready").exists():
        shutil.rmtree(template, ignore_errors=True)
        build_box(lfw_dir, template)
        (template / "ready").write_text("ok")
    return template
