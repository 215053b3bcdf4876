"""The demo's faces folder: which people each box enrols (disjoint, in name order, dealt
round-robin), which of their photos it enrols and holds out, and the strangers each box
sees (people no box enrols, one photo each); the demo's options and input errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.demo import DEMO_PART, DEMO_ROUNDS
from edge.demo.camera import DEFAULT_CAMERAS, Person
from edge.errors import FedFaceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


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


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def pick_people(opts: DemoOptions) -> list[list[Person]]:
    """Disjoint people per box: one sub-folder per person, enough photos for enrolment
    and held-out testing; deterministic (sorted by name, dealt round-robin)."""
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
    need_people = opts.boxes * opts.people_per_box
    eligible = []
    for folder in folders:
        imgs = _images(folder)
        if len(imgs) >= need_images:
            eligible.append(Person(folder.name, imgs[: opts.images_per_person],
                                   imgs[opts.images_per_person : need_images]))
        if len(eligible) == need_people:
            break
    if len(eligible) < need_people:
        raise DemoError(
            f"{faces} has {len(eligible)} people with at least {need_images} photos; the demo "
            f"needs {need_people} ({opts.boxes} boxes x {opts.people_per_box} people)",
            "use fewer --boxes / --people-per-box / --images-per-person, or more faces")
    return [eligible[i :: opts.boxes] for i in range(opts.boxes)]


def pick_strangers(opts: DemoOptions, enrolled: list[list[Person]]) -> list[list[Person]]:
    """Per box, ``strangers_per_box`` people no box enrols, one photo each (the first),
    disjoint between boxes: what the box's camera sees of people it must not name. Fewer
    when the faces folder has fewer people left."""
    taken = {p.name for people in enrolled for p in people}
    wanted = opts.boxes * opts.strangers_per_box
    strangers: list[Person] = []
    for folder in sorted(p for p in opts.faces.iterdir() if p.is_dir()):
        if len(strangers) == wanted:
            break
        if folder.name not in taken:
            photos = _images(folder)[:1]
            if photos:
                strangers.append(Person(folder.name, [], photos))
    return [strangers[i :: opts.boxes] for i in range(opts.boxes)]
