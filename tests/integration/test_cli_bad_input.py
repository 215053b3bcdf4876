"""Bad input at the fedface-edge CLI: one clear ``error:`` line (+ ``hint:``), a non-zero
exit code of the right group, never a traceback; and nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from edge.cli import app
from edge.cli.errors import (
    EXIT_CONFIG,
    EXIT_GALLERY,
    EXIT_INPUT,
    EXIT_MODELS,
    EXIT_SOURCE,
    EXIT_USAGE,
)
from models.registry import model_path

FEDFACE_EDGE = Path(sys.executable).parent / "fedface-edge"


def invoke(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args], env=env)


def assert_clear_error(result: Result, code: int, *phrases: str) -> str:
    """Exit code, exactly one error line, no traceback; returns the error line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)
    return errors[0]


@pytest.fixture
def no_face_image(tmp_path: Path) -> Path:
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), cv2.merge([gradient] * 3))
    return path


@pytest.fixture
def corrupt_model_dir(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for key in ("yunet", "sface"):
        shutil.copy(model_path(key), models)
    target = models / "face_recognition_sface_2021dec.onnx"
    data = bytearray(target.read_bytes())
    for offset in (1000, 2_000_000, len(data) - 10):
        data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return models


def test_unreadable_and_missing_images(tmp_path: Path) -> None:
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not a jpeg")
    assert_clear_error(invoke(tmp_path / "box", "identify", str(fake)), EXIT_INPUT,
                       "is not an image", "hint:")
    assert_clear_error(invoke(tmp_path / "box", "identify", str(tmp_path / "nope.jpg")),
                       EXIT_INPUT, "does not exist")


def test_image_without_a_face(tmp_path: Path, no_face_image: Path, lfw_dir: Path) -> None:
    box = tmp_path / "box"
    assert_clear_error(invoke(box, "identify", str(no_face_image)), EXIT_INPUT, "no face found")
    good = str(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg")
    # a named enrolment stops at the bad photo and writes nothing
    assert_clear_error(invoke(box, "enroll", "Tony", good, str(no_face_image)), EXIT_INPUT,
                       "no face found", str(no_face_image))
    assert json.loads(invoke(box, "people", "list", "--json").stdout) == []
    # a folder where no photo has a face
    folder = tmp_path / "people" / "Nobody"
    folder.mkdir(parents=True)
    shutil.copy(no_face_image, folder)
    result = invoke(box, "enroll", "--from-dir", str(tmp_path / "people"))
    assert_clear_error(result, EXIT_INPUT, "no one could be enrolled")
    assert "not enrolled: Nobody" in result.stderr


def test_unknown_or_missing_video_sources(tmp_path: Path) -> None:
    box = tmp_path / "box"
    assert_clear_error(invoke(box, "run", "--source", "foo://camera/1"), EXIT_SOURCE,
                       "unknown scheme 'foo'", "hint:")
    assert_clear_error(invoke(box, "run", "--source", str(tmp_path / "missing.mp4")),
                       EXIT_SOURCE, "does not exist")
    assert_clear_error(invoke(box, "run", "--source", f"dir:{tmp_path}?fps=0"), EXIT_SOURCE,
                       "fps must be positive")


def test_corrupted_model_file(tmp_path: Path, corrupt_model_dir: Path, lfw_dir: Path) -> None:
    env = {"FEDFACE_MODEL_DIR": str(corrupt_model_dir)}
    photo = str(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg")
    line = assert_clear_error(invoke(tmp_path / "box", "identify", photo, env=env),
                              EXIT_MODELS, "fedface-edge models fetch")
    assert "face_recognition_sface_2021dec.onnx" in line and "expected" in line
    assert_clear_error(invoke(tmp_path / "box", "models", "verify", env=env), EXIT_MODELS,
                       "corrupt")


def test_unwritable_data_directory(tmp_path: Path) -> None:
    # tests run as root, which ignores mode bits: a path under a regular file cannot exist
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    data_dir = blocker / "sub"
    assert_clear_error(invoke(data_dir, "people", "list"), EXIT_GALLERY, str(data_dir),
                       "hint: choose a writable data directory")


def test_gallery_and_option_mistakes(tmp_path: Path, lfw_dir: Path) -> None:
    box = tmp_path / "box"
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg", frames)
    assert_clear_error(invoke(box, "people", "remove", "Nobody"), EXIT_GALLERY,
                       "no person named 'Nobody'", "people list")
    assert_clear_error(CliRunner().invoke(app, ["--threads", "0", "people", "list"]),
                       EXIT_CONFIG, "threads = 0")
    assert_clear_error(invoke(box, "enroll"), EXIT_USAGE, "nothing to enrol")
    assert_clear_error(invoke(box, "enroll", "--from-dir", str(tmp_path / "none")), EXIT_INPUT,
                       "is not a directory")
    assert_clear_error(invoke(box, "run", "--source", str(frames), "--events",
                              str(tmp_path / "nodir" / "x")), EXIT_USAGE, "cannot write events")


def test_console_script_errors_are_one_line(tmp_path: Path, corrupt_model_dir: Path,
                                            lfw_dir: Path) -> None:
    env = {**os.environ, "FEDFACE_MODEL_DIR": str(corrupt_model_dir),
           "FEDFACE_DATA_DIR": str(tmp_path / "box")}
    photo = str(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg")
    for args, code in (
        (["identify", photo], EXIT_MODELS),
        (["run", "--source", "foo://x"], EXIT_SOURCE),
        (["--data-dir", str(tmp_path / "f" / "x"), "people", "list"], EXIT_GALLERY),
    ):
        if code == EXIT_GALLERY:
            (tmp_path / "f").write_text("file")
        result = subprocess.run([str(FEDFACE_EDGE), *args], capture_output=True, text=True,
                                env=env, timeout=60, check=False)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines
        assert all(line.startswith(("error: ", "hint: ")) for line in lines), lines
        assert result.stdout == ""
