"""The demo's picking of people and photos from a user's faces folder, and what it says
of every file it passes over (issue: it enrolled fewer photos than it said)."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.demo.faces import DemoOptions, pick
from edge.demo.progress import Progress


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of that size (its header only: nothing to decode)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _lfw_people(lfw_dir: Path, n: int, min_photos: int) -> list[Path]:
    found = []
    for person in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        if len(list(person.glob("*.jpg"))) >= min_photos:
            found.append(person)
            if len(found) == n:
                break
    return found


@pytest.fixture
def faces(lfw_dir: Path, tmp_path: Path) -> Path:
    """Four people of 4 LFW photos (the first with a text file, a broken JPEG and a 49 MP
    PNG among them), one with a single photo and one with no photo at all."""
    root = tmp_path / "faces"
    for i, person in enumerate(_lfw_people(lfw_dir, 4, 4)):
        folder = root / f"Person {i}"
        folder.mkdir(parents=True)
        for k, photo in enumerate(sorted(person.glob("*.jpg"))[:4]):
            shutil.copy(photo, folder / f"{2 * k}.jpg")
    ada = root / "Person 0"
    (ada / "1-notes.txt").write_text("taken at the front desk\n")
    (ada / "3-scan.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)  # a header cut short
    (ada / "5-poster.png").write_bytes(_png_header(7000, 7000))
    (ada / ".DS_Store").write_bytes(b"\x00")  # hidden: not looked at, as `ls`
    single = root / "Ann Single"  # sorts before the others: looked at for enrolment
    single.mkdir()
    shutil.copy(next(iter(sorted(lfw_dir.glob("*/*.jpg")))), single / "1.jpg")
    (root / "Zed Nobody").mkdir()
    (root / "Zed Nobody" / "notes.txt").write_text("no photo yet\n")
    return root


def test_only_usable_photos_are_picked_and_every_file_passed_over_is_said(
        faces: Path) -> None:
    opts = DemoOptions(faces=faces, boxes=2, people_per_box=2, images_per_person=2,
                       heldout_per_person=2)
    picked = pick(opts)
    ada = next(p for people in picked.boxes for p in people if p.name == "Person 0")
    # the four photos, not the notes, the broken scan or the 49 MP poster
    assert [p.name for p in ada.enrol + ada.heldout] == ["0.jpg", "2.jpg", "4.jpg", "6.jpg"]
    skipped = {p.name: reason for p, reason in picked.skipped}
    assert set(skipped) == {"1-notes.txt", "3-scan.jpg", "5-poster.png", "notes.txt"}
    assert skipped["1-notes.txt"].startswith("it is not an image")
    assert skipped["3-scan.jpg"].startswith("it is not an image")
    assert skipped["5-poster.png"] == ("it is 7000x7000 pixels (49 MP), more than the 40 MP "
                                       "allowed")
    # too few photos: not enrolled, said; the one with a photo is a stranger, said
    assert picked.too_few == {"Ann Single": 1, "Zed Nobody": 0}
    assert [[p.name for p in s] for s in picked.strangers] == [["Ann Single"], []]
    lines = picked.report(opts)
    assert f"skipped {faces / 'Person 0' / '5-poster.png'}: it is 7000x7000 pixels (49 MP), " \
           "more than the 40 MP allowed" in lines
    assert f"skipped {faces / 'Zed Nobody' / 'notes.txt'}: it is not an image" in "\n".join(lines)
    assert ("not enrolled: 2 people with fewer than 4 usable photos (the demo's "
            "--images-per-person + --heldout-per-person): Ann Single (1 photo), "
            "Zed Nobody (0 photos)") in lines
    assert lines[-1] == (
        "only 1 stranger photo for 2 boxes (50 asked per box): strangers are the people no "
        "box enrols (here those with fewer than 4 usable photos, and any past the 4 "
        "enrolled), one photo each: Ann Single; no strangers for box-2 (strangers "
        "named: n/a)")


def test_people_are_counted_by_their_usable_photos(faces: Path) -> None:
    """notes.txt and a broken scan.jpg made a person of 2 photos count as one of 4."""
    short = faces / "Person 1"
    for photo in sorted(short.glob("*.jpg"))[2:]:
        photo.unlink()
    (short / "8-notes.txt").write_text("x")
    (short / "9-scan.jpg").write_bytes(b"not a jpeg")
    opts = DemoOptions(faces=faces, boxes=1, people_per_box=3, images_per_person=2,
                       heldout_per_person=2, strangers_per_box=2)
    picked = pick(opts)
    assert [p.name for p in picked.boxes[0]] == ["Person 0", "Person 2", "Person 3"]
    assert picked.too_few["Person 1"] == 2
    # as many strangers as asked: nothing said of them
    assert [p.name for p in picked.strangers[0]] == ["Ann Single", "Person 1"]
    assert not any(line.startswith("only ") for line in picked.report(opts))


def test_the_box_says_which_photos_it_found_no_face_in(lfw_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Photos the box refused (no face) were only in box.log at INFO: now an event,
    naming the faces folder's photo, that the demo prints."""
    from edge.demo.box import EVENT_PREFIX, enrol, skip_event
    from edge.gallery.store import Gallery
    from edge.vision.pipeline import FacePipeline

    photos = sorted(lfw_dir.glob("*/*.jpg"))[:2]
    blank = tmp_path / "camera" / "00-wall.png"
    blank.parent.mkdir()
    cv2.imwrite(str(blank), np.full((250, 250, 3), 128, np.uint8))
    original = tmp_path / "faces" / "Ada" / "wall.jpg"
    cfg = {"camera": "motion-blur", "originals": {str(blank): str(original)}}
    people = [{"name": "Ada", "enrol": [str(photos[0]), str(blank)],
               "heldout": [str(blank), str(photos[1])]},
              {"name": "Bob", "enrol": [str(blank)], "heldout": [str(photos[1])]}]
    with Gallery.open(tmp_path / "box") as gallery:
        held = enrol(FacePipeline.from_model_dir(threads=1), gallery, people, [str(blank)],
                     skip_event(cfg))
    assert held.names == ["Ada"] and not held.strangers
    events = [json.loads(line[len(EVENT_PREFIX):]) for line in capsys.readouterr().out
              .splitlines() if line.startswith(EVENT_PREFIX)]
    skipped = [e for e in events if e["event"] == "skipped"]
    assert [(e["file"], e["what"]) for e in skipped] == [
        (str(original), "enrolment photo"), (str(original), "held-out photo"),
        (str(original), "enrolment photo"), (str(original), "stranger's photo")]
    assert skipped[0]["reason"].startswith(
        f"no face found in the motion-blur camera's shot of it ({blank})")
    assert [e["person"] for e in events if e["event"] == "not_enrolled"] == ["Bob"]
    said: list[str] = []
    progress = Progress(["box-1"], 1, said.append)
    for event in events:
        progress.add("box-1", event)
    assert said[0].startswith(f"  box-1: skipped {original} (enrolment photo): no face found "
                              "in the motion-blur camera's shot of it")
    assert ("  box-1: not enrolled: Bob (no enrolment photo with a face; the "
                        "lines above say why)") in said
