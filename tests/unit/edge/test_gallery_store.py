"""The SQLite gallery with real LFW crops and real SFace embeddings."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import config
from edge.gallery.files import encode_crop
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD
from edge.gallery.store import (
    Gallery,
    GalleryError,
    ModelVersionMismatchError,
    UnknownPersonError,
)
from edge.vision.align import align_face
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder
from models.registry import model_path, optimised_sface_path

V1 = "sface-2021dec"
KNOWN = ("Colin_Powell", "Gloria_Macapagal_Arroyo", "Hugo_Chavez")
STRANGER = "Serena_Williams"


class Faces:
    def __init__(self, lfw_dir: Path) -> None:
        self.lfw_dir = lfw_dir
        self.detector = FaceDetector(model_path("yunet"))
        self.embedder = Embedder(optimised_sface_path(), version=V1)

    def crop(self, person: str, number: int) -> np.ndarray:
        image = cv2.imread(str(self.lfw_dir / person / f"{person}_{number:04d}.jpg"))
        assert image is not None
        faces = self.detector.detect(np.asarray(image))
        assert faces, f"no face in {person} {number}"
        return align_face(np.asarray(image), faces[0].landmarks)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        return self.embedder.embed(crops)


@pytest.fixture(scope="module")
def faces(lfw_dir: Path) -> Faces:
    return Faces(lfw_dir)


@pytest.fixture
def gallery(tmp_path: Path, faces: Faces) -> Iterator[Gallery]:
    with Gallery.open(tmp_path / "box") as g:
        for person in KNOWN:
            crops = [faces.crop(person, 1), faces.crop(person, 2)]
            g.enroll(person, crops, faces.embed(crops), V1, sources=["1.jpg", "2.jpg"])
        yield g


def test_identifies_unseen_images_and_rejects_a_stranger(gallery: Gallery, faces: Faces) -> None:
    probes = [faces.crop(person, 3) for person in KNOWN] + [faces.crop(STRANGER, 1)]
    matches = gallery.identify_many(faces.embed(probes), V1, DEFAULT_MATCH_THRESHOLD)
    assert [m.name for m in matches[:3]] == list(KNOWN)
    assert all(m.score >= DEFAULT_MATCH_THRESHOLD for m in matches[:3])
    stranger = matches[3]
    assert stranger.name is None and stranger.person_id is None
    assert stranger.score < DEFAULT_MATCH_THRESHOLD and stranger.best_name in KNOWN
    # the single-probe call agrees with the batch
    single = gallery.identify(faces.embed(probes[:1])[0], V1, DEFAULT_MATCH_THRESHOLD)
    assert single.name == KNOWN[0] and single.score == pytest.approx(matches[0].score)


def test_threshold_decides_between_name_and_unknown(gallery: Gallery, faces: Faces) -> None:
    probe = faces.embed([faces.crop(KNOWN[1], 3)])[0]
    score = gallery.identify(probe, V1, -1.0).score
    assert gallery.identify(probe, V1, score).name == KNOWN[1]
    assert gallery.identify(probe, V1, score + 1e-4).name is None


def test_people_persist_and_cache_follows_changes(tmp_path: Path, gallery: Gallery,
                                                  faces: Faces) -> None:
    probe = faces.embed([faces.crop(STRANGER, 2)])[0]
    assert gallery.identify(probe, V1, DEFAULT_MATCH_THRESHOLD).name is None
    crop = faces.crop(STRANGER, 1)
    gallery.enroll(STRANGER, [crop], faces.embed([crop]), V1)
    # the cached matrix was invalidated by the enrolment
    assert gallery.identify(probe, V1, DEFAULT_MATCH_THRESHOLD).name == STRANGER
    gallery.close()
    with Gallery.open(tmp_path / "box") as reopened:
        people = {p.name: p for p in reopened.people()}
        assert sorted(people) == sorted([*KNOWN, STRANGER])
        assert people[KNOWN[0]].crops == 2 and people[KNOWN[0]].embeddings == {V1: 2}
        assert reopened.identify(probe, V1, DEFAULT_MATCH_THRESHOLD).name == STRANGER


def test_remove_person_deletes_their_crops_and_embeddings(gallery: Gallery) -> None:
    assert gallery.count_rows() == {"people": 3, "crops": 6, "embeddings": 6}
    assert gallery.remove_person(KNOWN[0]) == 2
    assert gallery.count_rows() == {"people": 2, "crops": 4, "embeddings": 4}
    # checked with a separate connection, straight from the file
    db = sqlite3.connect(gallery.path)
    person_ids = {r[0] for r in db.execute("SELECT person_id FROM crops")}
    names = {r[0] for r in db.execute("SELECT name FROM people")}
    orphans = db.execute(
        "SELECT COUNT(*) FROM embeddings WHERE crop_id NOT IN (SELECT id FROM crops)"
    ).fetchone()[0]
    db.close()
    assert KNOWN[0] not in names and len(person_ids) == 2 and orphans == 0
    with pytest.raises(UnknownPersonError, match="no person named 'Colin_Powell'"):
        gallery.remove_person(KNOWN[0])


def test_a_removed_persons_crops_are_gone_from_every_file_on_disk(
        gallery: Gallery, faces: Faces) -> None:
    """helper-44 found a removed person's face crops still in the gallery's -wal file
    (until the last connection closed) and freed pages keep their bytes: erased now."""
    stored = [encode_crop(faces.crop(KNOWN[0], n)) for n in (1, 2)]
    files = [gallery.path, gallery.path.with_name(gallery.path.name + "-wal")]

    def on_disk(blob: bytes) -> bool:
        return any(f.exists() and blob[64:192] in f.read_bytes() for f in files)

    assert all(on_disk(blob) for blob in stored)  # the check can see them
    gallery.remove_person(KNOWN[0])
    assert not any(on_disk(blob) for blob in stored)
    assert on_disk(encode_crop(faces.crop(KNOWN[1], 1)))  # the others are kept


def test_other_model_versions_are_never_compared(gallery: Gallery, faces: Faces) -> None:
    probe = faces.embed([faces.crop(KNOWN[2], 3)])[0]
    with pytest.raises(ModelVersionMismatchError, match="no embeddings of model 'sface-v2'"):
        gallery.identify(probe, "sface-v2", DEFAULT_MATCH_THRESHOLD)
    # a person enrolled under another version is invisible to V1 probes, even with the
    # very vector of the probe
    gallery.enroll("Impostor", [faces.crop(KNOWN[2], 3)], probe[None, :], "sface-v2")
    match = gallery.identify(probe, V1, DEFAULT_MATCH_THRESHOLD)
    assert match.name == KNOWN[2] and match.score < 0.999


def test_reembed_from_stored_crops_replaces_the_version(gallery: Gallery, faces: Faces) -> None:
    before = gallery.identify_many(
        faces.embed([faces.crop(p, 3) for p in KNOWN]), V1, DEFAULT_MATCH_THRESHOLD)
    new_model = Embedder(optimised_sface_path(), version="sface-v2")
    assert gallery.reembed(new_model, drop_old=False) == 6
    assert gallery.model_versions() == {V1: 6, "sface-v2": 6}
    assert gallery.drop_other_versions("sface-v2") == 6
    assert gallery.model_versions() == {"sface-v2": 6}
    probes = new_model.embed([faces.crop(p, 3) for p in KNOWN])
    after = gallery.identify_many(probes, "sface-v2", DEFAULT_MATCH_THRESHOLD)
    # same weights, PNG crops are lossless: the same scores come back
    assert [m.name for m in after] == list(KNOWN)
    assert [m.score for m in after] == pytest.approx([m.score for m in before], abs=1e-5)
    with pytest.raises(ModelVersionMismatchError):
        gallery.identify(probes[0], V1, DEFAULT_MATCH_THRESHOLD)


def test_files_are_private(tmp_path: Path, gallery: Gallery) -> None:
    box = tmp_path / "box"
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
    for name in ("gallery.sqlite3", "gallery.sqlite3-wal", "gallery.sqlite3-shm"):
        assert stat.S_IMODE((box / name).stat().st_mode) == 0o600, name


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    # a path under a regular file cannot be created, even by root (mode bits would not do)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(GalleryError) as caught:
        Gallery.open(blocker / "sub")
    assert str(blocker / "sub") in str(caught.value)
    assert "--data-dir" in caught.value.hint


def test_bad_embeddings_and_names_are_refused(gallery: Gallery, faces: Faces) -> None:
    crop = faces.crop(KNOWN[0], 3)
    with pytest.raises(GalleryError, match="128 values"):
        gallery.enroll("X", [crop], np.ones((1, 64), np.float32), V1)
    with pytest.raises(GalleryError, match="NaN"):
        gallery.identify(np.full(128, np.nan, np.float32), V1, 0.4)
    with pytest.raises(GalleryError, match="Enter the person"):
        gallery.enroll("  ", [crop], np.ones((1, 128), np.float32), V1)
    with pytest.raises(GalleryError, match="112x112x3"):
        gallery.enroll("X", [crop[:100]], np.ones((1, 128), np.float32), V1)
    assert "X" not in {p.name for p in gallery.people()}


def test_empty_gallery_reports_unknown(tmp_path: Path) -> None:
    with Gallery.open(tmp_path / "empty") as g:
        match = g.identify(np.ones(128, np.float32), V1, DEFAULT_MATCH_THRESHOLD)
    assert match.name is None and match.score == 0.0


def test_settings_default_threshold_mirrors_the_gallery() -> None:
    assert config.DEFAULT_MATCH_THRESHOLD == DEFAULT_MATCH_THRESHOLD


def test_a_name_in_decomposed_unicode_is_the_typed_one(tmp_path: Path, faces: Faces,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """helper-64: "José García" from a macOS folder name (e + U+0301) and typed on a
    keyboard (é) looked the same and were two people; `people remove` of the typed name
    removed only its own, then said there was no such person while the list showed one."""
    import unicodedata

    typed = "José García"
    from_folder = unicodedata.normalize("NFD", typed)
    assert from_folder != typed
    one, two = [faces.crop(KNOWN[0], n) for n in (1, 2)]
    with Gallery.open(tmp_path / "box") as g:
        g.enroll(from_folder, [one], faces.embed([one]), V1)
        g.enroll(typed, [two], faces.embed([two]), V1)
        assert [(p.name, p.crops) for p in g.people()] == [(typed, 2)]  # one person
        assert g.remove_person(from_folder) == 2  # removed by either form
        assert g.people() == []

    # a gallery from before: the decomposed name stored as it came, and a person whose
    # name differs from it only in that form (enrolled then, two rows)
    with Gallery.open(tmp_path / "old") as g:
        g.enroll(typed, [one], faces.embed([one]), V1)
    db = sqlite3.connect(tmp_path / "old" / "gallery.sqlite3")
    db.execute("INSERT INTO people(name, created) VALUES (?, 0)", (from_folder,))
    db.execute("INSERT INTO people(name, created) VALUES (?, 0)",
               (unicodedata.normalize("NFD", "Zoë Ångström"),))
    db.commit()
    db.close()
    with Gallery.open(tmp_path / "old") as g:
        names = sorted(p.name for p in g.people())
        assert names == sorted([typed, from_folder, "Zoë Ångström"])  # the lone one composed
        assert "two people are enrolled as 'José García'" in caplog.text
        g.remove_person(typed)  # the typed one; the other is said again at the next open
    with Gallery.open(tmp_path / "old") as g:
        assert sorted(p.name for p in g.people()) == sorted([typed, "Zoë Ångström"])
        g.remove_person(typed)  # now composed too: the typed name removes it
        g.remove_person("Zoë  Ångström ")  # spaces as the name's rule takes them
        assert g.people() == []
