"""Issue 17 at the CLI: ``identify`` over many photos and folders in one process,
grey PGM and extension-less GIF face sets enrolled with ``--from-dir``, the permission
warning said once per process, and ``-v`` help that matches what it accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from edge.cli import app
from edge.cli.errors import EXIT_INPUT

PEOPLE = ("Colin_Powell", "Tony_Blair")


def invoke(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])


@pytest.fixture
def odd_formats(tmp_path: Path, lfw_dir: Path) -> Path:
    """people/pgm/<name>/N.pgm (grey) and people/gif/<name>/subjectN (no extension),
    as in the public face sets of issue 17, made from LFW photos."""
    root = tmp_path / "people"
    for person in PEOPLE:
        for n in (1, 2, 3):
            bgr = cv2.imread(str(lfw_dir / person / f"{person}_{n:04d}.jpg"))
            (root / "pgm" / person).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "pgm" / person / f"{n}.pgm"),
                        cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
            (root / "gif" / person).mkdir(parents=True, exist_ok=True)
            Image.fromarray(bgr[:, :, ::-1]).save(root / "gif" / person / f"subject{n}",
                                                  format="GIF")
    (root / "gif" / PEOPLE[1] / "Readme").write_text("not a photo")
    return root


def test_pgm_and_gif_folders_enrol_and_identify_in_one_batch(tmp_path: Path, odd_formats: Path,
                                                              lfw_dir: Path) -> None:
    box = tmp_path / "box"
    pgm = invoke(box, "enroll", "--from-dir", str(odd_formats / "pgm"))
    assert pgm.exit_code == 0, pgm.output
    assert "enrolled 2 of 2 people from 6 image(s); skipped 0" in pgm.stdout
    gif = invoke(tmp_path / "box_gif", "enroll", "--from-dir", str(odd_formats / "gif"))
    assert gif.exit_code == 0, gif.output
    assert "enrolled 2 of 2 people from 6 image(s); skipped 1" in gif.stdout
    assert "Readme: it is not an image" in gif.stderr

    wall = tmp_path / "wall.png"  # a photo without a face
    cv2.imwrite(str(wall), cv2.imread(str(lfw_dir / PEOPLE[0] / f"{PEOPLE[0]}_0001.jpg"))[:40, :40])
    unseen = lfw_dir / PEOPLE[1] / f"{PEOPLE[1]}_0010.jpg"
    result = invoke(box, "identify", "--json", str(odd_formats / "gif"), str(unseen),
                    str(wall), str(tmp_path / "missing.jpg"))
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    by_image = {Path(r["image"]).name: r for r in reports}
    # one object per photo: 6 GIFs found recursively, the JPEG, the wall, the missing file
    assert len(reports) == 9 and "Readme" not in by_image
    assert by_image["missing.jpg"]["error"] == "it does not exist"
    assert by_image["wall.png"]["faces"] == []
    assert by_image[unseen.name]["faces"][0]["name"] == PEOPLE[1]
    for report in reports:
        if Path(report["image"]).parent.name in PEOPLE:
            assert report["faces"][0]["name"] == Path(report["image"]).parent.name
    # everything reported, then a non-zero exit saying what went wrong
    assert result.exit_code == EXIT_INPUT
    assert "error: 1 of 9 image(s) could not be read" in result.stderr
    # the photo without a face is counted too (helper-47: the line named only the one)
    assert "(first: " in result.stderr and "); no face found in 1" in result.stderr
    # a photo whose header reads and whose pixels do not: named on stderr in plain output
    # as the files skipped before it (it was said only in the summary)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(unseen.read_bytes()[:2000])
    plain = invoke(box, "identify", str(truncated), str(unseen))
    assert plain.exit_code == EXIT_INPUT, plain.output
    assert f"skipped {truncated}: " in plain.stderr, plain.stderr


def test_open_data_dir_warned_once_per_process_with_the_fix(tmp_path: Path, lfw_dir: Path) -> None:
    box = tmp_path / "box"
    box.mkdir(mode=0o755)
    os.chmod(box, 0o755)
    photo = str(lfw_dir / PEOPLE[0] / f"{PEOPLE[0]}_0001.jpg")
    first = invoke(box, "identify", photo, photo)
    assert first.stderr.count("open to other users") == 1
    assert f"chmod 700 {box}" in first.stderr
    assert "open to other users" not in invoke(box, "people", "list").stderr


def test_verbose_help_shows_a_repeatable_flag() -> None:
    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"}).stdout
    line = next(line for line in help_text.splitlines() if "--verbose" in line)
    assert "<int>" not in line and "-vv" in line
    number = CliRunner().invoke(app, ["-v", "2", "people", "list"], env={"COLUMNS": "120"})
    assert number.exit_code == 2 and "-v takes no number" in number.output
