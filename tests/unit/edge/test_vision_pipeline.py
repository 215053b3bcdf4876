"""Detect / align / embed / pipeline on real LFW images against OpenCV's own SFace path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import FedFaceError, ImageReadError, NoFaceError
from edge.vision.align import align_face
from edge.vision.detect import Face, FaceDetector
from edge.vision.embed import Embedder
from edge.vision.pipeline import FacePipeline, read_image
from models.registry import model_path, optimised_sface_path
from tests.support.vision import PEOPLE, lfw_image_paths


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline.from_model_dir(threads=1)


@pytest.fixture(scope="module")
def cv2_yunet() -> cv2.FaceDetectorYN:
    return cv2.FaceDetectorYN.create(str(model_path("yunet")), "", (250, 250), 0.8, 0.3, 5000)


@pytest.fixture(scope="module")
def cv2_sface() -> cv2.FaceRecognizerSF:
    return cv2.FaceRecognizerSF.create(str(model_path("sface")), "")


def test_detects_one_central_face_per_lfw_image(pipeline: FacePipeline, lfw_dir: Path) -> None:
    for path in lfw_image_paths(lfw_dir):
        faces = pipeline.detector.detect(read_image(path))
        assert faces, path
        face = faces[0]
        assert isinstance(face, Face) and face.score >= 0.8
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        x, y, w, h = face.box
        assert 60 < x + w / 2 < 190 and 60 < y + h / 2 < 190, (path, face.box)  # LFW centres faces
        right_eye, left_eye = face.landmarks[0], face.landmarks[1]
        assert right_eye[0] < left_eye[0]  # subject's right eye is on the image's left


def test_large_frame_is_downscaled_and_mapped_back(pipeline: FacePipeline, lfw_dir: Path) -> None:
    image = read_image(lfw_image_paths(lfw_dir)[0])
    frame = np.full((720, 1280, 3), 80, np.uint8)
    frame[300:550, 700:950] = image
    small = pipeline.detector.detect(image)[0]
    big = pipeline.detector.detect(frame)[0]  # detected at 320x180, reported in frame px
    expected = small.landmarks + np.array([700, 300], np.float32)
    assert np.abs(big.landmarks - expected).max() < 12  # 4x downscale: a few px of error
    assert abs(big.box[2] - small.box[2]) < 0.15 * small.box[2]


def test_alignment_matches_opencv_aligncrop(
    pipeline: FacePipeline, cv2_yunet: cv2.FaceDetectorYN, cv2_sface: cv2.FaceRecognizerSF,
    lfw_dir: Path,
) -> None:  # fmt: skip
    for path in lfw_image_paths(lfw_dir):
        image = read_image(path)
        _, raw = cv2_yunet.detect(image)
        ours = align_face(image, raw[0][4:14].reshape(5, 2))
        theirs = cv2_sface.alignCrop(image, raw[0])
        assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, path  # rounding only


def test_embedding_matches_opencv_sface(
    pipeline: FacePipeline, cv2_sface: cv2.FaceRecognizerSF, lfw_dir: Path
) -> None:
    crops = [pipeline.process(read_image(p))[0].crop for p in lfw_image_paths(lfw_dir)]
    ours = pipeline.embedder.embed(crops)
    assert ours.shape == (len(PEOPLE), 128) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    for crop, vec in zip(crops, ours, strict=True):
        ref = cv2_sface.feature(crop).ravel()
        cosine = float(vec @ ref / np.linalg.norm(ref))
        assert cosine >= 0.9999
    # different people are far apart: the comparison above is not between constants
    assert float(ours[0] @ ours[1]) < 0.5


def test_embedder_batches_give_the_same_vectors(lfw_dir: Path, pipeline: FacePipeline) -> None:
    crops = [pipeline.process(read_image(p))[0].crop for p in lfw_image_paths(lfw_dir)]
    small_batches = Embedder(optimised_sface_path(), batch_size=5).embed(crops)
    one_by_one = np.stack([pipeline.embedder.embed_one(c) for c in crops])
    np.testing.assert_allclose(small_batches, one_by_one, atol=1e-5)
    assert pipeline.embedder.embed([]).shape == (0, 128)


def test_same_person_closer_than_different(pipeline: FacePipeline, lfw_dir: Path) -> None:
    bush = [
        pipeline.embed_image_file(lfw_dir / "George_W_Bush" / f"George_W_Bush_{i:04d}.jpg")
        for i in (1, 2)
    ]
    blair = pipeline.embed_image_file(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg")
    same = float(bush[0].embedding @ bush[1].embedding)
    different = float(bush[0].embedding @ blair.embedding)
    assert same > 0.5 > different


def test_process_reports_stage_timings(pipeline: FacePipeline, lfw_dir: Path) -> None:
    frame = np.full((480, 640, 3), 100, np.uint8)
    frame[100:350, 200:450] = read_image(lfw_image_paths(lfw_dir)[2])
    found = pipeline.process(frame)
    assert len(found) == 1
    assert found[0].crop.shape == (112, 112, 3)
    timings = pipeline.last_timings
    assert timings.detect > 0 and timings.embed > 0 and timings.total < 2.0


def test_image_without_face_raises_no_face(
    pipeline: FacePipeline, tmp_path: Path, lfw_dir: Path
) -> None:
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="no face") as err:
        pipeline.embed_image_file(gray)
    assert err.value.hint
    # real background: the top-left corner of an LFW photo, upscaled, has no face in it
    corner = read_image(lfw_image_paths(lfw_dir)[0])[:60, :60]
    background = tmp_path / "background.jpg"
    cv2.imwrite(str(background), cv2.resize(corner, (240, 240)))
    with pytest.raises(NoFaceError):
        pipeline.embed_image_file(background)
    assert pipeline.process(read_image(gray)) == []


def test_unreadable_files_raise_image_read_error(pipeline: FacePipeline, tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        pipeline.embed_image_file(tmp_path / "missing.jpg")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a JPEG")
    with pytest.raises(ImageReadError, match="decode"):
        pipeline.embed_image_file(not_image)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(FedFaceError):
        pipeline.embed_image_file(empty)


def test_bad_arrays_are_rejected(pipeline: FacePipeline) -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        pipeline.detector.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="112x112x3"):
        pipeline.embedder.embed([np.zeros((100, 100, 3), np.uint8)])
    with pytest.raises(ValueError, match="5x2"):
        align_face(np.zeros((100, 100, 3), np.uint8), np.zeros((4, 2)))


def test_inference_path_never_imports_torch(repo_root: Path) -> None:
    code = (
        "import sys, edge.vision.pipeline, edge.vision.detect, edge.vision.align\n"
        "import edge.vision.embed, edge.errors, "
        "models.registry, models.onnx_graph\n"
        "p = edge.vision.pipeline.FacePipeline.from_model_dir()\n"
        "import numpy as np; p.process(np.zeros((480, 640, 3), np.uint8))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH' if bad else 'CLEAN', bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("CLEAN"), out.stdout


def test_detector_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="score_threshold"):
        FaceDetector(model_path("yunet"), score_threshold=1.5)
