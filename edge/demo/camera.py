"""Each demo box's own camera: its people's photos as that box's camera would take them.

A real kiosk never sees a clean photo: it has its own lens, light and sensor. The demo
deals one camera look (``edge.vision.camera_domain.KIOSK_DOMAINS``) to each box and writes
the box's enrolment and held-out photos through it into ``<box dir>/camera/<person>/``
(0600: they are biometric data), so the box enrols and is scored on what its camera sees,
and the federated training has that camera's look to learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge.vision.camera_domain import CLEAN, KIOSK_DOMAINS, Domain, kiosk_domain
from federation.files import PRIVATE_DIR, make_dirs, open_new

KIOSK_CAMERAS = tuple(d.name for d in KIOSK_DOMAINS)
# The kiosk looks by default, dealt in turn, hardest first: a kiosk never sees a clean
# photo (on clean LFW photos of a few dozen people the pretrained model already names
# nearly every held-out photo, so a demo of them shows nothing a round could change), and
# a camera the pretrained model handles worst is where a box needs the federation most.
# Order: the pretrained model's verification accuracy on each look in the realistic
# bench (python -m bench.federation.realistic_sites, 4 sites per look, 300 test people):
# ir-grey 91.6, cheap-webcam 92.8, motion-blur 92.9, backlight 94.0, low-light 95.3,
# focus-blur 96.4.
DEFAULT_CAMERAS = ("ir-grey", "cheap-webcam", "motion-blur", "backlight", "low-light",
                   "focus-blur")
CAMERA_NAMES = tuple(d.name for d in (CLEAN, *KIOSK_DOMAINS))


@dataclass
class Person:
    name: str
    enrol: list[Path]
    heldout: list[Path]


def box_cameras(names: Sequence[str], boxes: int) -> list[Domain]:
    """The camera of each box, dealt round-robin from ``names`` (ValueError naming the
    known cameras for an unknown one)."""
    if not names:
        raise ValueError(f"no camera given (known cameras: {', '.join(CAMERA_NAMES)})")
    domains = [kiosk_domain(name) for name in names]
    return [domains[i % len(domains)] for i in range(boxes)]


def shoot(people: list[Person], domain: Domain, folder: Path, seed: int) -> list[Person]:
    """The people's photos as ``domain``'s camera takes them, written under ``folder``;
    returns the same people pointing at those photos. A clean camera keeps the originals."""
    if domain == CLEAN:
        return people
    make_dirs(folder, PRIVATE_DIR)
    shot = []
    for p_index, person in enumerate(people):
        out_dir = folder / person.name
        make_dirs(out_dir, PRIVATE_DIR)

        def take(paths: list[Path], start: int, out_dir: Path = out_dir,
                 p_index: int = p_index) -> list[Path]:
            taken = []
            for k, path in enumerate(paths, start):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:  # an unreadable photo stays as it is: enrolment says why
                    taken.append(path)
                    continue
                # a fixed seed per photo: the same demo always shoots the same noise
                out = domain.apply(image, seed=seed * 100_003 + p_index * 101 + k)
                ok, buf = cv2.imencode(".png", out)
                assert ok
                target = out_dir / f"{k:02d}-{path.stem}.png"
                with open_new(target, 0o600) as f:
                    f.write(buf.tobytes())
                taken.append(target)
            return taken

        shot.append(Person(person.name, take(person.enrol, 0),
                           take(person.heldout, len(person.enrol))))
    return shot
