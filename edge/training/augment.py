"""Augmented views of an aligned 112x112 enrolment crop, for on-device training.

A box enrols each person from a handful of crops; a few cheap variants per crop (mirror,
a small shift as if the landmarks were a few pixels off, brightness/contrast as if the
light changed) give the margin loss more to work with. Views are deterministic for a
given seed so that trunk features can be computed once and cached. cv2/numpy only.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SHAPE = (112, 112, 3)


class CropError(ValueError):
    """A crop is not an aligned 112x112 BGR uint8 image."""


def check_crop(crop: np.ndarray) -> np.ndarray:
    if not isinstance(crop, np.ndarray) or crop.shape != CROP_SHAPE:
        shape = getattr(crop, "shape", None)
        raise CropError(f"crop has shape {shape}, expected an aligned {CROP_SHAPE} BGR image")
    return crop.astype(np.uint8, copy=False)


def _shift(crop: np.ndarray, dx: int, dy: int) -> np.ndarray:
    matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    shifted: np.ndarray = cv2.warpAffine(crop, matrix, (112, 112), borderMode=cv2.BORDER_REFLECT)
    return shifted


def _photometric(crop: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    out = crop.astype(np.float32) * contrast + brightness
    return np.clip(out, 0, 255).astype(np.uint8)


def augmented_views(crop: np.ndarray, n_views: int, seed: int) -> list[np.ndarray]:
    """``n_views`` crops: the original first, then mirrored/shifted/relit variants."""
    crop = check_crop(crop)
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    rng = np.random.default_rng(seed)
    views = [crop]
    for k in range(1, n_views):
        view = crop[:, ::-1] if k % 2 == 1 else crop
        dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
        view = _shift(np.ascontiguousarray(view), dx, dy)
        view = _photometric(view, float(rng.uniform(0.8, 1.2)), float(rng.uniform(-20, 20)))
        views.append(view)
    return views
