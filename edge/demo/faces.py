"""The demo's faces folder: which people each box enrols (disjoint, in name order, dealt
round-robin), which of their photos it enrols and holds out, and the strangers each box
sees (people no box enrols, one photo each); the demo's options and input errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge.demo import DEMO_PART, DEMO_ROUNDS
from edge.demo.camera import DEFAULT_CAMERAS, Person
from edge.errors import FedFaceError, ImageReadError
from edge.vision.image_files import SNIFF_BYTES, why_not_an_image
from edge.vision.image_header import DEFAULT_MAX_PIXELS, check_header


class DemoError(FedFaceError):
    """The demo cannot run with these inputs (faces folder, broker, work directory)."""

    exit_code = 2


@dataclass(frozen=True)
class DemoOptions:
    faces: Path
    boxes: int = 3
    rounds: int = DEMO_ROUNDS
    broker: str | None = None
    # a branch's few dozen people with a photo or two each (issue 18's small sites)
    people_per_box: int = 30
    images_per_person: int = 2
    heldout_per_person: int = 2
    workdir: Path | None = None
    part: str = DEMO_PART
    timeout_s: float = 900.0
    train_budget_s: float = 20.0
    cameras: tuple[str, ...] = DEFAULT_CAMERAS  # dealt to the boxes round-robin
    strangers_per_box: int = 50  # people no box enrols, one photo each, per box


def photos(folder: Path, wanted: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The first ``wanted`` photos of a person's folder a box can use, in name order, and
    the files before them passed over with the reason: images by the box's own rule
    (``edge.vision.image_files``: by content, not name), whose header says they are at most
    the 40 MP a box decodes (``edge.vision.image_header``). Headers only: a face is looked
    for by the box (it says which photos had none)."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    # files, hidden ones left out, in name order: as image_files lists a folder
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if len(found) == wanted:
            break
        reason = why_not_an_image(path)
        if reason is None:
            try:
                with open(path, "rb") as handle:
                    check_header(handle.read(SNIFF_BYTES), DEFAULT_MAX_PIXELS, source="it")
            except ImageReadError as exc:
                reason = exc.message
            except OSError as exc:
                reason = f"cannot read it: {exc.strerror or exc}"
        if reason is None:
            found.append(path)
        else:
            skipped.append((path, reason))
    return found, skipped


@dataclass
class Picked:
    """Who each box enrols and sees as strangers, and what the picking passed over."""

    boxes: list[list[Person]]  # per box, its people (enrolment and held-out photos)
    strangers: list[list[Person]]  # per box, people no box enrols, one photo each
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files, with the reason
    too_few: dict[str, int] = field(default_factory=dict)  # person -> usable photos

    def report(self, opts: DemoOptions) -> list[str]:
        """What the console says of the picking: every file passed over, the people not
        enrolled for too few photos, and strangers fewer than asked."""
        lines = [f"skipped {path}: {reason}" for path, reason in self.skipped]
        need = opts.images_per_person + opts.heldout_per_person
        if self.too_few:
            n = len(self.too_few)
            lines.append(f"not enrolled: {n} {'person' if n == 1 else 'people'} with fewer "
                         f"than {need} "
                         "usable photos (the demo's --images-per-person + "
                         f"--heldout-per-person): {_names(self.too_few)}")
        got = sum(len(s) for s in self.strangers)
        asked = opts.strangers_per_box
        if got < opts.boxes * asked:
            none = [f"box-{i + 1}" for i, s in enumerate(self.strangers) if not s]
            names = {p.name: 1 for s in self.strangers for p in s}
            lines.append(
                f"only {got} stranger photo{'s' * (got != 1)} for {opts.boxes} boxes ({asked} "
                f"asked per box): strangers are the people no box enrols (here those with "
                f"fewer than {need} usable photos, and any past the {_enrolled(opts)} "
                f"enrolled), one photo each" + (f": {_names(names, counts=False)}" if got
                                                else "")
                + (f"; no strangers for {', '.join(none)} (strangers named: n/a)"
                   if none else ""))
        return lines


def _enrolled(opts: DemoOptions) -> int:
    return opts.boxes * opts.people_per_box


def _names(people: dict[str, int], counts: bool = True, most: int = 10) -> str:
    named = [f"{n} ({k} photo{'s' * (k != 1)})" if counts else n
             for n, k in list(people.items())[:most]]
    more = len(people) - most
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def pick(opts: DemoOptions) -> Picked:
    """Disjoint people per box: one sub-folder per person, enough usable photos
    (``photos``) for enrolment and held-out testing; deterministic (sorted by name, dealt
    round-robin). Then, per box, ``strangers_per_box`` people no box enrols, one photo
    each (their first usable one), disjoint between boxes: what the box's camera sees of
    people it must not name; fewer when the faces folder has fewer people left."""
    faces = opts.faces
    if not faces.exists():
        raise DemoError(f"faces folder {faces} does not exist",
                        "give --faces DIR with one sub-folder of photos per person")
    if not faces.is_dir():
        raise DemoError(f"{faces} is not a folder", "--faces takes a folder of person folders")
    folders = sorted(p for p in faces.iterdir() if p.is_dir())
    if not folders:
        raise DemoError(f"{faces} has no sub-folders",
                        "put each person's photos in their own sub-folder, e.g. faces/Ada/1.jpg")
    need_images = opts.images_per_person + opts.heldout_per_person
    need_people = _enrolled(opts)
    picked = Picked([], [])
    looked: dict[str, list[Path]] = {}  # person -> usable photos (all of them: too few)
    eligible: list[Person] = []
    for folder in folders:
        if len(eligible) == need_people:
            break
        imgs, skipped = photos(folder, need_images)
        picked.skipped += skipped
        if len(imgs) >= need_images:
            eligible.append(Person(folder.name, imgs[: opts.images_per_person],
                                   imgs[opts.images_per_person : need_images]))
        else:
            looked[folder.name] = imgs
            picked.too_few[folder.name] = len(imgs)
    if len(eligible) < need_people:
        raise DemoError(
            f"{faces} has {len(eligible)} people with at least {need_images} usable photos; "
            f"the demo needs {need_people} ({opts.boxes} boxes x {opts.people_per_box} "
            "people)", "use fewer --boxes / --people-per-box / --images-per-person, or more "
            "faces" + ("; the lines above say which files were skipped" if picked.skipped
                       else ""))
    picked.boxes = [eligible[i :: opts.boxes] for i in range(opts.boxes)]
    taken = {p.name for p in eligible}
    wanted = opts.boxes * opts.strangers_per_box
    strangers: list[Person] = []
    for folder in folders:
        if len(strangers) == wanted:
            break
        if folder.name in taken:
            continue
        if folder.name in looked:
            first = looked[folder.name][:1]
        else:
            first, skipped = photos(folder, 1)
            picked.skipped += skipped
            if not first:
                picked.too_few[folder.name] = 0
        if first:
            strangers.append(Person(folder.name, [], first))
    picked.strangers = [strangers[i :: opts.boxes] for i in range(opts.boxes)]
    return picked
