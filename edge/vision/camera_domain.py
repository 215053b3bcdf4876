"""A camera's look, as a deterministic degradation of an image: what a given kiosk camera
does to a face (low resolution, colour cast, greyscale or IR-like grey, low light,
backlight, focus or motion blur, sensor noise, JPEG).

The federated-accuracy bench gives each site one of these (applied to the aligned 112 px
crop) and the demo gives each box one (applied to the whole photo before detection, as the
box's own camera would), so that a box's model has something of its own camera to learn.
``low_res`` is in pixels across a 112 px face; on a larger image the image is shrunk by
the same factor, so the face ends up about that many pixels wide either way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 112
_KIOSK_FIELDS = ("ir", "backlight", "motion_px")


@dataclass(frozen=True)
class Domain:
    name: str
    low_res: int = 0  # 0: keep; else a 112 px face down to this many px (area) and back
    grey: bool = False
    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0  # > 1 darkens (low light)
    blur_sigma: float = 0.0  # focus blur
    noise_sigma: float = 0.0
    jpeg_quality: int = 0  # 0: no JPEG round trip
    ir: bool = False  # IR-like grey: the near-infrared look (red channel, flat contrast)
    backlight: float = 0.0  # 0..1: the face darkened against a bright background
    motion_px: int = 0  # horizontal motion blur length, pixels across a 112 px face

    def __repr__(self) -> str:
        # The bench keys its cached trunk features by this text: the kiosk looks' fields
        # appear only when set, so the older domains keep their keys (and caches).
        fields = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                  if f.name not in _KIOSK_FIELDS or getattr(self, f.name) != f.default]
        return f"Domain({', '.join(fields)})"

    def apply(self, image: np.ndarray, seed: int) -> np.ndarray:
        """Degrade a BGR uint8 image (an aligned crop or a whole photo) as this camera
        would; the same (image, seed) always gives the same result."""
        height, width = image.shape[:2]
        scale = min(height, width) / CROP_SIZE if min(height, width) < 2 * CROP_SIZE else \
            min(height, width) / (2.2 * CROP_SIZE)  # a photo: the face is about half of it
        img: np.ndarray = image.astype(np.float32) * np.asarray(self.colour_gain,
                                                                dtype=np.float32)
        if self.ir:
            # skin reflects near infrared strongly: the red channel, lifted and flattened
            red = img[..., 2]
            img = np.repeat((60.0 + 0.7 * red)[..., None], 3, axis=2)
        elif self.grey:
            grey = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
            img = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        if self.backlight > 0:
            img = _backlit(img, self.backlight)
        if self.gamma != 1.0:
            img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** self.gamma
        if self.blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur_sigma * scale)
        if self.motion_px > 1:
            length = max(2, round(self.motion_px * scale))
            kernel = np.full((1, length), 1.0 / length, dtype=np.float32)
            img = cv2.filter2D(img, -1, kernel)
        if self.low_res:
            small = (max(1, round(width * self.low_res / (CROP_SIZE * scale))),
                     max(1, round(height * self.low_res / (CROP_SIZE * scale))))
            img = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.noise_sigma > 0:
            rng = np.random.default_rng(seed)
            # a mono IR sensor's noise is the same in the three (copied) channels
            shape = (*img.shape[:2], 1) if self.ir else img.shape
            img = img + rng.normal(0.0, self.noise_sigma, shape).astype(np.float32)
        out = np.clip(img, 0, 255).astype(np.uint8)
        if self.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            assert ok
            decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            assert decoded is not None
            out = np.asarray(decoded, dtype=np.uint8)
        return out


def _backlit(img: np.ndarray, strength: float) -> np.ndarray:
    """A bright window behind the subject: the centre (the face) is underexposed, the
    edges are blown out; ``strength`` 1 halves the face's light."""
    height, width = img.shape[:2]
    ys = (np.arange(height, dtype=np.float32) - height / 2) / (height / 2)
    xs = (np.arange(width, dtype=np.float32) - width / 2) / (width / 2)
    radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    gain = (1.0 - 0.5 * strength) + strength * np.clip(radius, 0.0, 1.0) ** 2
    return img * gain[..., None] + 60.0 * strength * np.clip(radius - 0.7, 0.0, 1.0)[..., None]


CLEAN = Domain("clean")

# Kiosk cameras, one look each: the demo deals them to its boxes in this order.
KIOSK_DOMAINS = (
    Domain("low-light", gamma=2.4, noise_sigma=9.0, low_res=40, jpeg_quality=40),
    Domain("backlight", backlight=0.9, gamma=1.6, low_res=36, jpeg_quality=35),
    Domain("motion-blur", motion_px=9, low_res=32, noise_sigma=5.0, jpeg_quality=35),
    Domain("ir-grey", ir=True, blur_sigma=1.0, low_res=30, noise_sigma=6.0),
    Domain("focus-blur", blur_sigma=1.8, colour_gain=(1.2, 0.95, 0.8), jpeg_quality=30),
    Domain("cheap-webcam", low_res=24, colour_gain=(0.85, 1.0, 1.25), noise_sigma=7.0,
           jpeg_quality=25),
)


def kiosk_domain(name: str) -> Domain:
    for domain in (CLEAN, *KIOSK_DOMAINS):
        if domain.name == name:
            return domain
    known = ", ".join(d.name for d in (CLEAN, *KIOSK_DOMAINS))
    raise ValueError(f"unknown camera domain {name!r} (known: {known})")
