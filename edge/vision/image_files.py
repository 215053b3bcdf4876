"""Which files are images: the one rule of every command that takes photos from disk.

A file is an image when its first bytes are the header of a format this box decodes
(``edge.vision.image_header``: JPEG, PNG, WebP, BMP, TIFF, GIF, PGM/PPM, anything else
Pillow reads), whatever its name: grey PGM face sets and extension-less GIFs (issue 17)
count, a damaged JPEG or a text file named ``photo.jpg`` does not. ``fedface-edge
identify``, ``enroll --from-dir`` and ``run --source dir:`` all list folders here, and
every file they skip comes back with the reason, for them to name.

Hidden files (``.DS_Store``, editor swap files) are not looked at, like ``ls`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.vision.image_header import FORMATS, read_header

# enough for any header read_header parses (JPEG APPn segments are skipped by length;
# an EXIF block with a thumbnail is at most 64 KB)
SNIFF_BYTES = 256 * 1024


@dataclass
class ImageScan:
    """The images found under some inputs, and the files passed over with a reason."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)


def why_not_an_image(path: Path) -> str | None:
    """None if ``path`` is an image by the rule above, else the reason it is not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if not head:
        return "empty file"
    if read_header(head) is None:
        return f"it is not an image ({FORMATS}), or its header is damaged"
    return None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _files_under(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry):
            continue
        if entry.is_dir():
            if recursive:
                found += _files_under(entry, recursive)
        elif entry.is_file():
            found.append(entry)
    return found


def scan(inputs: Iterable[Path], recursive: bool = True) -> ImageScan:
    """The images among ``inputs`` (files, and folders listed in name order, their
    sub-folders too when ``recursive``). A file named directly that is not an image is
    skipped with its reason as well: the caller decides whether that is an error."""
    result = ImageScan()
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            candidates = _files_under(item, recursive)
        elif item.exists():
            candidates = [item]
        else:
            result.skipped.append((item, "it does not exist"))
            continue
        for path in candidates:
            reason = why_not_an_image(path)
            if reason is None:
                result.images.append(path)
            else:
                result.skipped.append((path, reason))
    return result


def images_in(folder: Path) -> list[Path]:
    """The images directly inside ``folder``, in name order (non-images left out)."""
    return scan([folder], recursive=False).images
