"""Run the API: settings, the HTTP(S) server in a thread, and a clean stop.

Cheroot's thread-pool WSGI server in a thread (``edge.http_thread``, as the kiosk's),
with keep-alive connections: requests are parsed and their images decoded in parallel,
and take turns on the engine (``edge.api.faces``). It logs no request lines (their
query carries subject names). With ``tls_cert`` and ``tls_key`` it serves HTTPS
itself; without, it refuses to listen beyond loopback unless told ``allow_plain_http``
(API keys and face photos would cross the network in clear).
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from flask import Flask

from edge.api import compreface as cf
from edge.api.app import ApiServices, create_api
from edge.api.faces import FaceService
from edge.api.keys import ApiKeys
from edge.api.limits import TokenBuckets
from edge.errors import FedFaceError
from edge.http_thread import HttpThread, TlsFilesError, server_tls
from edge.serving.recognizer import Recognizer
from edge.vision.image_header import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


class ApiStartError(FedFaceError):
    exit_code = 2


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000  # CompreFace's own default port: clients' examples work as they are
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plain_http: bool = False
    max_upload_bytes: int = 8 * 2**20  # as the kiosk's uploads
    max_pixels: int = DEFAULT_MAX_PIXELS
    rate_per_s: float = 20.0  # per API key; a camera integration sends a few a second
    burst: float = 40.0
    bad_key_per_min: float = 10.0  # per address: guessing keys is hopeless at that pace


def _loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class ApiServer:
    settings: ApiSettings
    recognizer: Recognizer
    data_dir: Path
    app: Flask = field(init=False)
    _http: HttpThread = field(default_factory=lambda: HttpThread("api"), repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        services = ApiServices(FaceService(self.recognizer, s.max_pixels), ApiKeys(self.data_dir),
                               TokenBuckets(s.rate_per_s, s.burst),
                               TokenBuckets(s.bad_key_per_min / 60.0, s.bad_key_per_min),
                               s.max_upload_bytes)
        self.app = create_api(services)

    @property
    def url(self) -> str:
        return self._http.url("https" if self.settings.tls_cert else "http")

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        try:
            context = server_tls(s.tls_cert, s.tls_key)
        except TlsFilesError as exc:
            raise ApiStartError(str(exc), hint="give a PEM certificate and its private "
                                "key") from exc
        if context is None and not _loopback(s.host) and not s.allow_plain_http:
            raise ApiStartError(
                f"refusing to serve plain HTTP on {s.host}: API keys and face photos "
                "would cross the network unencrypted",
                hint="give --tls-cert/--tls-key, put a TLS proxy in front and pass "
                "--allow-plain-http, or listen on 127.0.0.1")
        return context

    def start(self) -> ApiServer:
        tls = self._tls()
        if not ApiKeys(self.data_dir).list():
            log.warning("no API key exists yet: every request will get 401 "
                        "(create one with `fedface-edge api-key create SERVICE`)")
        try:
            # far past the cap the HTTP server refuses on the header alone: in the API's
            # JSON too (app.py answers the uploads just over it)
            limit = self.settings.max_upload_bytes / 2**20
            too_large = json.dumps(cf.error(f"the upload is over {limit:g} MB",
                                            cf.CODE_TOO_LARGE)).encode()
            self._http.listen(self.settings.host, self.settings.port, self.app, tls,
                              ("application/json", too_large))
        except OSError as exc:
            raise ApiStartError(f"cannot listen on {self.settings.host}:{self.settings.port}: "
                                f"{exc.strerror or exc}",
                                hint="choose another --port or stop what uses it") from exc
        self.recognizer.engine.start_watcher()  # hot swaps and enrolments made elsewhere
        self._http.start()
        log.info("recognition API serving on %s", self.url)
        return self

    def stop(self) -> None:
        self._http.stop()
        self.recognizer.engine.stop_watcher()
