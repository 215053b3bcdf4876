"""``fedface-edge train`` through the CLI: real LFW faces, real torch training, real hot
swap; the errors (no people, no torch) as one clear line and an exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.gallery.store import Gallery
from edge.serving.recognizer import Recognizer, images_in
from edge.vision.pipeline import FacePipeline
from models.federated_parts import DEFAULT_PART, get_part
from tests.support.federation_rig import part_base_vector

pytest.importorskip("torch")

PEOPLE, CROPS = 5, 3


def invoke(data_dir: Path, *args: str) -> tuple[int, str, str]:
    # --niceness 0: CliRunner runs in this process, which must not stay niced
    result = CliRunner().invoke(app, list(args), env={"FEDFACE_DATA_DIR": str(data_dir)})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    data_dir = tmp_path_factory.mktemp("train-box")
    people = [p for p in sorted(lfw_dir.iterdir())
              if len(list(p.glob("*.jpg"))) >= CROPS][:PEOPLE]
    pipeline = FacePipeline.from_model_dir(threads=1)
    with Gallery.open(data_dir) as gallery:
        recognizer = Recognizer(pipeline, gallery, 0.40)
        for person in people:
            recognizer.enroll_images(person.name, images_in(person)[:CROPS])
        recognizer.engine.close()
    return data_dir


def test_train_within_budget_then_apply(enrolled: Path) -> None:
    part = get_part(DEFAULT_PART)
    code, out, err = invoke(enrolled, "train", "--niceness", "0", "--epochs", "500",
                            "--budget-seconds", "4", "--apply", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["part"] == part.key and report["people"] == PEOPLE
    assert report["samples"] == PEOPLE * CROPS
    assert report["stopped_by_budget"] and report["steps"] > 0  # 500 epochs do not fit in 4 s
    assert report["started_from"] == "base"
    assert report["probes"] == PEOPLE * CROPS
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= report[key] <= 1.0
    with np.load(report["result_path"]) as saved:
        assert str(saved["part"]) == part.key and int(saved["n_samples"]) == PEOPLE * CROPS
        vector = saved["vector"]
    assert vector.shape == (part.size,) and np.all(np.isfinite(vector))
    assert not np.array_equal(vector, part_base_vector(part))  # training moved the weights
    assert report["served"] is True
    assert (Path(report["result_path"]).stat().st_mode & 0o777) == 0o600

    code, out, _ = invoke(enrolled, "model", "status", "--json")
    assert code == 0 and json.loads(out)["current"]["version"] == report["version"]

    # a second run starts from the weights the box now serves, and says so (text output)
    code, out, err = invoke(enrolled, "train", "--niceness", "0", "--epochs", "1",
                            "--budget-seconds", "5")
    assert code == 0, out + err
    assert f"trained {part.key} on {PEOPLE} people, {PEOPLE * CROPS} samples" in out
    assert "leave-one-out identification on this box's people" in out
    assert f"started from {report['version']}" in out
    assert "not served" in out


@pytest.mark.parametrize("people", [0, 1])
def test_train_without_enough_people_is_one_clear_error(
        tmp_path: Path, lfw_dir: Path, people: int) -> None:
    if people:
        person = next(p for p in sorted(lfw_dir.iterdir()) if len(list(p.glob("*.jpg"))) >= 2)
        with Gallery.open(tmp_path) as gallery:
            recognizer = Recognizer(FacePipeline.from_model_dir(threads=1), gallery, 0.40)
            recognizer.enroll_images(person.name, images_in(person)[:2])
            recognizer.engine.close()
    code, out, err = invoke(tmp_path, "train", "--niceness", "0")
    assert code == 5
    assert f"{people} enrolled people" in err and "at least 2" in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "train" / "results").exists()


def test_train_without_torch_says_how_to_install_it(tmp_path: Path) -> None:
    hide = tmp_path / "hide" / "torch"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(hide.parent), "FEDFACE_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "train"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 10, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "pip install 'fedface[train]'" in lines[0]
