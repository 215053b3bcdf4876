"""The rule for a person's name, shared by every way in (kiosk, ``fedface-edge enroll``,
the gallery itself).

A name is shown on the kiosk screen, in alerts, logs and the CLI's tables. Control
characters can break those lines or a terminal; bidirectional controls (U+202A-202E
embeddings and overrides, U+2066-2069 isolates, U+200E/200F and U+061C marks) make a
name display as something else than it is ("Trojan Source": an override can show
"evil" as "live", or move text that follows the name). They are refused, never
silently removed, so what is stored is what was typed. Runs of spaces are collapsed and
the ends trimmed, so "Ada  Lovelace" and "Ada Lovelace" are one person, and the name is
stored in Unicode's composed form (NFC): "José" from a macOS folder name (decomposed,
e + U+0301) and "José" typed on a keyboard (é) look the same and were two people, the
typed one unable to remove the other (helper-64). A name looked up is put in the same
form (``stored_form``); a gallery from before is brought to it when opened.
"""

from __future__ import annotations

import unicodedata

from edge.gallery.files import GalleryError

MAX_NAME_LENGTH = 64
BIDI_CONTROLS = frozenset({*range(0x202A, 0x202F), *range(0x2066, 0x206A),
                           0x200E, 0x200F, 0x061C})


class NameRejected(GalleryError):
    """A person's name that cannot be stored; the message says why, for staff or user."""

    exit_code = 2  # a bad argument: the usage group of ``fedface-edge``


def _forbidden(char: str) -> str | None:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    if code in BIDI_CONTROLS:
        return "a text-direction control character"
    if unicodedata.category(char) in ("Zl", "Zp"):  # U+2028/2029 break the line too
        return "a line break"
    return None


def check_name(raw: str) -> str:
    """The name to store for ``raw``, or ``NameRejected`` saying what is wrong with it."""
    for position, char in enumerate(raw, start=1):
        what = _forbidden(char)
        if what is not None:
            raise NameRejected(f"The name contains {what} (U+{ord(char):04X}, character "
                               f"{position}); type the name with letters, spaces and "
                               "punctuation only.")
    name = stored_form(raw)
    if not name:
        raise NameRejected("Enter the person's name.")
    if len(name) > MAX_NAME_LENGTH:
        raise NameRejected(f"The name is too long (at most {MAX_NAME_LENGTH} characters).")
    return name


def stored_form(name: str) -> str:
    """``name`` as the gallery stores it: spaces collapsed, ends trimmed, composed (NFC).
    For looking a name up; ``check_name`` also refuses what cannot be stored."""
    return unicodedata.normalize("NFC", " ".join(name.split()))


def capitals_twin(enrolled: str, name: str) -> NameRejected:
    """``name`` beside ``enrolled``, the same but for capitals: "hans_blix" beside
    "Hans_Blix" was a second person, unchecked (helper-56), by every way in."""
    return NameRejected(f"{enrolled} is enrolled, and {name} differs only in capitals: "
                        "type the name as enrolled, or another name for someone else.")
