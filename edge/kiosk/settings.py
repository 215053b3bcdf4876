"""Settings of the kiosk web page (validated like the box settings: key + value + reason)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.config import ConfigError, describe_validation_error

DEFAULT_PORT = 8080


class KioskSettings(BaseModel):
    """Kiosk web server, session, enrolment and alert settings (see each description)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on. Loopback by default: the kiosk screen runs a "
        "browser on the box itself. Any other address exposes face images and the staff "
        "password to the network: serve HTTPS (tls_cert, tls_key) or put a TLS reverse "
        "proxy in front (then set cookie_secure).")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535,
                      description="TCP port (0: any free port).")
    cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure (only sent over HTTPS). Set it when a TLS "
        "proxy fronts the kiosk; plain-HTTP loopback logins would fail with it. Always on "
        "with tls_cert.")
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain): serve the page over HTTPS, TLS "
        "1.2 or later, with tls_key.")
    tls_key: Path | None = Field(
        default=None, description="PEM private key of tls_cert (keep it 0600, readable by "
        "the kiosk's user only).")
    idle_timeout_s: float = Field(
        default=900.0, gt=0,
        description="A session with no page view or form post for this long is logged out. "
        "The live view's own background refreshes do not count as activity.")
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins allowed per client within login_window_s.")
    login_window_s: float = Field(
        default=300.0, gt=0, description="Window of the login rate limit (seconds).")
    login_global_max_failures: int = Field(
        default=50, ge=1,
        description="Failed logins from all clients together within login_window_s after "
        "which only browsers that logged in on this kiosk before may try (a backstop "
        "against guessing from many addresses).")
    login_concurrent_checks: int = Field(
        default=2, ge=1, le=8,
        description="Password checks run at once (each takes 64 MiB and a fraction of a "
        "second); further attempts wait up to login_check_wait_s, then get 'busy'.")
    login_check_wait_s: float = Field(
        default=5.0, ge=0, le=60,
        description="How long a login attempt waits for a free password check.")
    max_upload_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="Largest enrolment upload (all photos of one request together).")
    max_upload_pixels: int = Field(
        default=40_000_000, ge=65_536,
        description="Largest photo accepted for enrolment, in pixels (width x height, read "
        "from the file header before decoding: a small file can decode to gigabytes).")
    max_upload_photos: int = Field(default=5, ge=1, le=20,
                                   description="Photos per upload enrolment.")
    enrol_shots: int = Field(
        default=3, ge=1, le=10,
        description="Accepted camera shots needed before a camera enrolment can be saved.")
    enrol_max_shots: int = Field(default=5, ge=1, le=10,
                                 description="Most camera shots kept for one enrolment.")
    min_face_px: int = Field(
        default=60, ge=16,
        description="Smallest face (shorter box side, frame pixels) accepted for enrolment. "
        "LFW's 250x250 portraits have faces of ~78-110 px.")
    min_sharpness: float = Field(
        default=45.0, ge=0,
        description="Variance of the Laplacian of the aligned 112x112 grey crop below which "
        "a shot is rejected as blurred. Measured on LFW: sharp portraits 56-430 (5th "
        "percentile 83); the same photos Gaussian-blurred (sigma 2.5) 6-38.")
    recent_size: int = Field(default=30, ge=1, description="Recognitions kept in memory.")
    recent_merge_s: float = Field(
        default=10.0, ge=0,
        description="A person seen again within this many seconds updates their last "
        "recognition instead of adding a new one.")
    alert_size: int = Field(default=30, ge=1, description="Unknown-face alerts kept.")
    alert_cooldown_s: float = Field(
        default=60.0, ge=0,
        description="An unknown face that matches an alerted unknown track seen within this "
        "many seconds raises no new alert (the alert's count and time are updated).")
    track_similarity: float = Field(
        default=0.363, ge=-1.0, le=1.0,
        description="SFace cosine at or above which an unknown face belongs to an existing "
        "unknown track (OpenCV's same-person threshold for SFace).")
    per_visit: bool = Field(
        default=True,
        description="Track faces and recognise each visit once: the lists show visits "
        "(with their best face crop) and each unknown visit raises one alert. false: "
        "recognise every face on every frame (alerts then follow alert_cooldown_s and "
        "track_similarity).")
    detect_every: int = Field(
        default=1, ge=1, le=10,
        description="Per visit: run the face detector on every k-th frame and let the "
        "tracker predict the boxes in between. 1 suits an x86 box; a Raspberry Pi 4 needs "
        "2 for a 30 fps camera (README, bench.edge.visits).")
    display_width: int = Field(
        default=640, ge=160, le=1920,
        description="Width of the annotated live image (frames are scaled for display "
        "only, after recognition).")
    jpeg_quality: int = Field(default=80, ge=30, le=95, description="Live image JPEG quality.")
    frame_stale_s: float = Field(
        default=3.0, gt=0,
        description="With no new frame for this long the camera counts as lost: the page "
        "marks the picture NOT LIVE and camera enrolment refuses it. A shot waits this "
        "long for a fresh frame.")

    @property
    def secure_cookies(self) -> bool:
        """Cookies go over HTTPS only: behind a TLS proxy (cookie_secure) or served so."""
        return self.cookie_secure or self.tls_cert is not None

    @model_validator(mode="after")
    def _shots_fit(self) -> KioskSettings:
        if self.enrol_max_shots < self.enrol_shots:
            raise ValueError(f"enrol_max_shots ({self.enrol_max_shots}) must be >= "
                             f"enrol_shots ({self.enrol_shots})")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "kiosk settings"
                     ) -> KioskSettings:
        given = {key: value for key, value in values.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, source),
                              hint="fix the value or leave it out to use the default") from None
