"""Face alignment: 5 landmarks -> the 112x112 ArcFace/SFace template, by a similarity warp.

Same template and the same least-squares similarity (Umeyama) as OpenCV's
``FaceRecognizerSF.alignCrop``, so crops match it to within interpolation rounding and
SFace's accuracy is unchanged. A similarity transform (rotation, uniform scale,
translation) keeps the face's proportions: a full affine fit would stretch faces to the
template and distort identity cues.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112

# Landmark positions in the 112x112 crop (right eye, left eye, nose, right/left mouth
# corner), the template SFace and ArcFace were trained with.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray = TEMPLATE_112) -> np.ndarray:
    """2x3 matrix of the least-squares similarity mapping ``src`` points onto ``dst``.

    Umeyama (1991), closed form via SVD: deterministic, unlike RANSAC-based
    cv2.estimateAffinePartial2D.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise ValueError(f"landmarks have shape {src.shape}, template {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    reflect = np.eye(2)
    if np.linalg.det(covariance) < 0:
        reflect[1, 1] = -1.0
    rotation = u @ reflect @ vt
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 0:
        raise ValueError("landmarks are all at one point: cannot align")
    scale = float((singular * np.diag(reflect)).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112x3 uint8 BGR crop of the face whose 5 landmarks are given (frame px)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"align_face needs 5x2 landmarks, got shape {points.shape}")
    matrix = similarity_transform(points)
    return cv2.warpAffine(bgr, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
