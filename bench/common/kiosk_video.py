"""A reproducible synthetic kiosk video: LFW faces walking in and out, with ground truth.

    videos = kiosk_videos(lfw_dir, seed=0)       # the scenarios below, 30 fps 640x480
    for video in videos:
        for index, frame in enumerate(video.frames()):   # rendered lazily, deterministic
            truth = video.truth[index]                   # [(visit id, (x, y, w, h)), ...]

Each visit shows one person's held-out photo (never the one enrolled: ``enrol_photo``
is image 1, visits use a later one) moving over a procedural room background, with:
scale change (walking towards the camera), motion blur (fast motion blurs the face
along its path), partial occlusion (a bar over the lower face for a stretch), 1-3
faces at a time, two people crossing (the nearer one drawn over the farther) and one
person stepping into the place another has just left (a tracker alone would take them
for one person). Strangers (people never enrolled) visit too. Ground truth per visit
(person, enrolled or not, first and last frame) and per frame (each visible face's visit
and box).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.vision.pipeline import read_image

FRAME_W, FRAME_H = 640, 480
SPRITE_MARGIN = 45  # the central 160x160 of a 250x250 LFW image holds the face
FACE_BOX = (0.2, 0.15, 0.6, 0.72)  # the face within a sprite, as fractions of its side
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Path2D:
    """A straight walk: centre and sprite side interpolated from start to end."""

    start: tuple[float, float, float]  # x, y, side
    end: tuple[float, float, float]

    def at(self, t: float) -> tuple[float, float, float]:
        return tuple(a + (b - a) * t for a, b in zip(self.start, self.end, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class VisitPlan:
    visit: int
    person: str
    enrolled: bool
    first_frame: int
    last_frame: int
    path: Path2D
    occluded: tuple[int, int] = (0, 0)  # frames with a bar over the lower face
    photo: int = 2  # LFW image number shown (1 is the enrolment photo)


@dataclass
class KioskVideo:
    name: str
    lfw_dir: Path
    visits: list[VisitPlan]
    length: int
    fps: float = 30.0
    seed: int = 0
    truth: list[list[tuple[int, Box]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.truth = [[(v.visit, _face_box(*v.path.at(self._t(v, i))))
                       for v in self._depth_order(i)] for i in range(self.length)]

    def enrolled_people(self) -> list[str]:
        return sorted({v.person for v in self.visits if v.enrolled})

    @staticmethod
    def _t(visit: VisitPlan, index: int) -> float:
        return (index - visit.first_frame) / max(visit.last_frame - visit.first_frame, 1)

    def _depth_order(self, index: int) -> list[VisitPlan]:
        """Visits on screen at ``index``, farthest (smallest) first so nearer ones cover them."""
        on = [v for v in self.visits if v.first_frame <= index <= v.last_frame]
        return sorted(on, key=lambda v: v.path.at(self._t(v, index))[2])

    def frames(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        background = _room(rng)
        noise = [rng.normal(0, 4, (FRAME_H, FRAME_W, 3)).astype(np.int16) for _ in range(4)]
        sprites = {v.visit: _sprite(self.lfw_dir, v.person, v.photo) for v in self.visits}
        for index in range(self.length):
            frame = background.copy()
            for visit in self._depth_order(index):
                t = self._t(visit, index)
                x, y, side = visit.path.at(t)
                step = np.subtract(visit.path.at(min(t + 1 / max(visit.last_frame
                                                                  - visit.first_frame, 1), 1.0)),
                                   (x, y, side))
                occluded = visit.occluded[0] <= index < visit.occluded[1]
                _paste(frame, sprites[visit.visit], x, y, side, float(np.hypot(*step[:2])),
                       occluded)
            noisy = frame.astype(np.int16) + noise[index % len(noise)]
            yield np.clip(noisy, 0, 255).astype(np.uint8)


def _room(rng: np.random.Generator) -> np.ndarray:
    """A wall with a gradient, some blurred shapes (doors, posters) and a floor."""
    ramp = np.linspace(0, 1, FRAME_W)[None, :, None]
    base = np.array(rng.integers(70, 180, 3), dtype=np.float64)
    room = (base * (0.7 + 0.3 * ramp)).repeat(FRAME_H, axis=0)
    for _ in range(6):
        x, y = int(rng.integers(0, FRAME_W - 80)), int(rng.integers(0, FRAME_H - 120))
        w, h = int(rng.integers(40, 160)), int(rng.integers(60, 220))
        room[y:y + h, x:x + w] = rng.integers(30, 230, 3)
    room[int(FRAME_H * 0.8):] *= 0.6
    return cv2.GaussianBlur(room.astype(np.uint8), (0, 0), 3)


def _sprite(lfw_dir: Path, person: str, photo: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(lfw_dir / person / f"{person}_{photo:04d}.jpg")
    face = image[SPRITE_MARGIN:250 - SPRITE_MARGIN, SPRITE_MARGIN:250 - SPRITE_MARGIN]
    side = face.shape[0]
    mask = np.zeros((side, side), np.float32)
    cv2.ellipse(mask, (side // 2, side // 2), (int(side * 0.42), int(side * 0.5)), 0, 0, 360,
                1.0, -1)
    return face, cv2.GaussianBlur(mask, (0, 0), side * 0.04)


def _face_box(x: float, y: float, side: float) -> Box:
    fx, fy, fw, fh = FACE_BOX
    left, top = x - side / 2, y - side / 2
    return (round(left + fx * side), round(top + fy * side), round(fw * side), round(fh * side))


def _paste(frame: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], x: float, y: float,
           side: float, speed: float, occluded: bool) -> None:
    face, mask = sprite
    size = max(8, round(side))
    face = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(mask, (size, size))
    if speed >= 3.0:  # motion blur along the (horizontal) walk, as long as the step
        length = min(int(speed), 25)
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        face = cv2.filter2D(face, -1, kernel)
    if occluded:  # a hand, a cup, a scarf: a bar over the mouth
        face = face.copy()
        face[int(size * 0.62):int(size * 0.85), int(size * 0.2):int(size * 0.8)] = (60, 50, 45)
    left, top = round(x - size / 2), round(y - size / 2)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, FRAME_W), min(top + size, FRAME_H)
    if x1 <= x0 or y1 <= y0:
        return
    part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    a = alpha[part][..., None]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = (a * face[part] + (1 - a) * region).astype(np.uint8)


def _people(lfw_dir: Path, rng: np.random.Generator, count: int,
            avoid: frozenset[str]) -> list[str]:
    """People with at least 3 photos (one to enrol, later ones to show), chosen by seed."""
    candidates = sorted(p.name for p in lfw_dir.iterdir() if p.name not in avoid
                        and p.is_dir() and (p / f"{p.name}_0003.jpg").is_file())
    if len(candidates) < count:
        raise ValueError(f"{lfw_dir} has {len(candidates)} people with 3+ photos, need {count}")
    return [candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)]


def kiosk_videos(lfw_dir: Path, seed: int = 0, seconds: float = 10.0, fps: float = 30.0,
                 avoid: frozenset[str] = frozenset()) -> list[KioskVideo]:
    """Five scenarios of ``seconds`` each; known people are enrolled from photo 1.
    ``avoid``: people not to show (those of another seed's videos, say)."""
    rng = np.random.default_rng(seed)
    people = _people(lfw_dir, rng, 9, avoid)
    # drawn after the first nine, so that adding the swap left the other scenarios' people
    swapping = _people(lfw_dir, rng, 2, avoid | frozenset(people))
    n = round(seconds * fps)
    last = n - 1
    cy = FRAME_H * 0.42

    def walk(x0: float, x1: float, s0: float, s1: float, y: float = cy) -> Path2D:
        return Path2D((x0, y, s0), (x1, y, s1))

    return [
        # one person approaches from the right, stays near the kiosk, a hand covers the
        # mouth for a second
        KioskVideo("approach", lfw_dir, [
            VisitPlan(1, people[0], True, 0, last, walk(560, 320, 110, 230),
                      occluded=(n // 2, n // 2 + round(fps)))], n, fps, seed),
        # two people cross in front of the kiosk (the nearer one hides the farther)
        KioskVideo("crossing", lfw_dir, [
            VisitPlan(1, people[1], True, 0, last, walk(90, 550, 150, 170)),
            VisitPlan(2, people[2], True, 0, last, walk(550, 90, 120, 130, cy - 20))],
            n, fps, seed + 1),
        # three at once: one enrolled, two strangers, staggered entries and exits, one fast
        KioskVideo("three", lfw_dir, [
            VisitPlan(1, people[3], True, 0, last, walk(120, 130, 140, 160)),
            VisitPlan(2, people[4], False, n // 5, last, walk(330, 320, 130, 150)),
            VisitPlan(3, people[5], False, n // 10, n // 2, walk(600, 480, 120, 120))],
            n, fps, seed + 2),
        # visitors one after the other, walking through fast (motion blur), a stranger last
        KioskVideo("passers", lfw_dir, [
            VisitPlan(1, people[6], True, 0, n // 3, walk(80, 560, 150, 150)),
            VisitPlan(2, people[7], True, n // 3 + 15, 2 * n // 3, walk(560, 80, 140, 150)),
            VisitPlan(3, people[8], False, 2 * n // 3 + 15, last, walk(100, 540, 160, 140))],
            n, fps, seed + 3),
        # an enrolled person leaves the kiosk and a stranger steps into the same place a
        # fifth of a second later: two visits, and the stranger must be "unknown"
        KioskVideo("swap", lfw_dir, [
            VisitPlan(1, swapping[0], True, 0, n // 2, walk(300, 330, 170, 180)),
            VisitPlan(2, swapping[1], False, n // 2 + round(fps / 5), last,
                      walk(330, 320, 180, 175))],
            n, fps, seed + 4),
    ]
