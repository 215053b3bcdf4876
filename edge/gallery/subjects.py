"""The gallery seen as CompreFace sees it: subjects (people, possibly with no photo yet)
and face examples (stored crops, each with an id). The recognition API
(``edge.api``) manages the gallery through these; enrolling a face is still
``Gallery.enroll_crops`` (crops and embeddings written in one transaction).

Names pass ``edge.gallery.names.check_name`` like every other way in.
"""

from __future__ import annotations

import sqlite3
import time

from edge.gallery.names import capitals_twin, check_name, stored_form
from edge.gallery.store import Gallery, GalleryError, UnknownPersonError


class SubjectExistsError(GalleryError):
    """A subject is added or renamed to a name the gallery already has."""


class Subjects:
    """Subjects and face examples of one gallery (thread-safe through its lock)."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self.gallery.read_rows(sql, args)

    def names(self) -> list[str]:
        return [str(row[0]) for row in self._query("SELECT name FROM people ORDER BY name")]

    def add(self, name: str) -> str:
        name = check_name(name)
        self._refuse_twin(name)
        try:
            self.gallery.write_rows([("INSERT INTO people(name, created) VALUES (?, ?)",
                                  (name, time.time()))])
        except GalleryError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise SubjectExistsError(f"subject {name!r} already exists") from None
            raise
        return name

    def rename(self, old: str, new: str) -> None:
        """CompreFace's rename: onto a name the gallery has, the two subjects are merged
        (the old one's face examples move to it, the old subject goes). It answered
        'already exists' (helper-47), where a CompreFace client expects the merge."""
        new, old = check_name(new), stored_form(old)
        old_id = self._person_id(old)
        self._refuse_twin(new, besides=old)
        if new == old or new not in self.names():
            self.gallery.write_rows([("UPDATE people SET name = ? WHERE name = ?", (new, old))])
            return
        new_id = self._person_id(new)
        self.gallery.write_rows([  # one transaction; a photo both have is kept once
            ("DELETE FROM crops WHERE person_id = ? AND image IN "
             "(SELECT image FROM crops WHERE person_id = ?)", (old_id, new_id)),
            ("UPDATE crops SET person_id = ? WHERE person_id = ?", (new_id, old_id)),
            ("DELETE FROM people WHERE id = ?", (old_id,))])

    def _refuse_twin(self, name: str, besides: str | None = None) -> None:
        """A name the gallery has in other capitals is refused, as at enrolment (helper-58:
        the API made "amelie_mauresmo" beside "Amelie_Mauresmo"); ``besides``: the
        subject being renamed, whose own name in other capitals is fine."""
        twins = [str(row[0]) for row in self._query(
            "SELECT name FROM people WHERE name = ? COLLATE NOCASE AND name != ?",
            (name, name)) if row[0] != besides]
        if twins:
            raise capitals_twin(twins[0], name)

    def remove_all(self) -> int:
        count = len(self.names())
        self.gallery.write_rows([("DELETE FROM people", ())])
        return count

    def _person_id(self, name: str) -> int:
        rows = self._query("SELECT id FROM people WHERE name = ?", (stored_form(name),))
        if not rows:
            raise UnknownPersonError(f"subject {name!r} not found")
        return int(rows[0][0])  # type: ignore[call-overload]

    def faces(self, name: str | None = None) -> list[tuple[int, str]]:
        """(crop id, subject) of every face example, or of one subject's."""
        sql = "SELECT c.id, p.name FROM crops c JOIN people p ON p.id = c.person_id"
        if name is None:
            rows = self._query(sql + " ORDER BY c.id")
        else:
            rows = self._query(sql + " WHERE p.id = ? ORDER BY c.id", (self._person_id(name),))
        return [(int(i), str(n)) for i, n in rows]  # type: ignore[call-overload]

    def remove_face(self, crop_id: int) -> tuple[int, str]:
        found = [row for row in self.faces() if row[0] == crop_id]
        if not found:
            raise UnknownPersonError(f"face example {crop_id} not found")
        self.gallery.write_rows([("DELETE FROM crops WHERE id = ?", (crop_id,))])
        return found[0]

    def remove_faces_of(self, name: str) -> int:
        person_id = self._person_id(name)
        count = len(self.faces(name))
        self.gallery.write_rows([("DELETE FROM crops WHERE person_id = ?", (person_id,))])
        return count
