"""Assemble and run a kiosk: source, pipeline, gallery, worker, web server.

The web server is Cheroot's thread-pool WSGI server, run in a thread
(``edge.http_thread``, shared with the recognition API): a kiosk serves one screen and
a few phones on the box's loopback or LAN. It writes no access log (Werkzeug's
development server logged a line per request: 4+ a second per open live view).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from flask import Flask

from edge.config import EdgeSettings
from edge.gallery.store import Gallery
from edge.http_thread import HttpThread, TlsFilesError, server_tls
from edge.kiosk.access import LoginGate, SessionEnds
from edge.kiosk.activity import ActivityLog
from edge.kiosk.app import create_app
from edge.kiosk.auth import KioskAuthError, PasswordStore
from edge.kiosk.enrolment import EnrolmentDesk
from edge.kiosk.services import KioskServices
from edge.kiosk.settings import KioskSettings
from edge.kiosk.worker import RecognitionWorker
from edge.serving.forget import forget_removed_faces
from edge.tracking.visit_events import VisitEvent
from edge.vision.capture import open_source
from edge.vision.detect import FaceDetector
from edge.vision.pipeline import FacePipeline
from models.registry import model_path

log = logging.getLogger(__name__)


class KioskStartError(KioskAuthError):
    """The kiosk cannot start (port in use, no password set...)."""


@dataclass
class Kiosk:
    services: KioskServices
    app: Flask
    _http: HttpThread = field(default_factory=lambda: HttpThread("kiosk"), repr=False)

    @property
    def url(self) -> str:
        return self._http.url("https" if self.services.settings.tls_cert else "http")

    def start(self) -> Kiosk:
        """Start recognition and serve in a background thread (``url`` is then valid)."""
        settings = self.services.settings
        try:
            tls = server_tls(settings.tls_cert, settings.tls_key)
        except TlsFilesError as exc:
            raise KioskStartError(str(exc), hint="give a PEM certificate and its private key "
                                  "(docs/operations.md, 'The kiosk over HTTPS')") from exc
        try:
            self._http.listen(settings.host, settings.port, self.app, tls)
        except OSError as exc:
            raise KioskStartError(f"cannot listen on {settings.host}:{settings.port}: "
                                  f"{exc.strerror or exc}",
                                  hint="choose another --port or stop what uses it") from exc
        self.services.worker.start()
        self._http.start()
        log.info("kiosk serving on %s", self.url)
        return self

    def stop(self) -> None:
        self._http.stop()
        self.services.worker.stop()
        self.services.gallery.close()


def _warn_if_exposed(host: str, secure: bool) -> None:
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not secure:
        log.warning("kiosk listens on %s over plain HTTP: face images and the staff password "
                    "cross the network unencrypted; give --tls-cert/--tls-key, or put a TLS "
                    "proxy in front and set --cookie-secure", host)


def build_kiosk(
    edge: EdgeSettings,
    settings: KioskSettings,
    source_uri: str,
    pipeline: FacePipeline | None = None,
    clock: Callable[[], float] = time.time,
    visit_sinks: Sequence[Callable[[VisitEvent], None]] = (),
) -> Kiosk:
    """Everything a kiosk needs, checked in the order that fails fastest. ``visit_sinks``:
    where the visit events go besides the page (the events file, an MQTT publisher)."""
    passwords = PasswordStore(edge.data_dir)
    if not passwords.is_set():
        raise KioskStartError(f"no kiosk password is set for {edge.data_dir}",
                              hint="run `fedface-edge kiosk set-password` first")
    _warn_if_exposed(settings.host, settings.secure_cookies or settings.tls_key is not None)
    source = open_source(source_uri)  # a bad URI fails before the models load
    gallery = Gallery.open(edge.data_dir)
    gallery.on_removal.append(forget_removed_faces)  # a removed face's features go too
    try:
        if pipeline is None:
            pipeline = FacePipeline.from_model_dir(edge.model_dir, threads=edge.threads)
        # the uploads get their own detector (YuNet keeps per-size state) and share the
        # embedder, whose ONNX Runtime session is safe to call from several threads
        upload_pipeline = FacePipeline(FaceDetector(model_path("yunet", edge.model_dir)),
                                       pipeline.embedder)
        activity = ActivityLog(settings.recent_size, settings.alert_size,
                               settings.recent_merge_s, settings.alert_cooldown_s,
                               settings.track_similarity, clock=clock)
        worker = RecognitionWorker(source, pipeline, gallery, edge.match_threshold, activity,
                                   settings.display_width, settings.jpeg_quality,
                                   stale_after_s=settings.frame_stale_s,
                                   per_visit=settings.per_visit,
                                   detect_every=settings.detect_every,
                                   visit_sinks=visit_sinks)
        desk = EnrolmentDesk(worker, gallery, upload_pipeline, settings, edge.match_threshold,
                             clock=clock, alerts=activity)
        gate = LoginGate(settings.login_max_failures, settings.login_window_s,
                         settings.login_global_max_failures, settings.login_concurrent_checks,
                         settings.login_check_wait_s, clock)
        services = KioskServices(settings, edge.data_dir, worker, activity, desk, gallery,
                                 passwords, gate, SessionEnds(edge.data_dir, clock),
                                 clock=clock)
        return Kiosk(services, create_app(services))
    except BaseException:
        gallery.close()
        raise
