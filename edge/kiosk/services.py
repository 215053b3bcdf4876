"""What every kiosk request handler reads: the shared services of the running kiosk and
the session's CSRF token.

Apart from the application factory (edge.kiosk.app) so that the views import this,
not the app that registers them: the app imports its views, never the reverse.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, session

from edge.gallery.store import Gallery
from edge.kiosk.access import LoginGate, SessionEnds
from edge.kiosk.activity import ActivityLog
from edge.kiosk.auth import PasswordStore
from edge.kiosk.enrolment import EnrolmentDesk
from edge.kiosk.settings import KioskSettings
from edge.kiosk.worker import RecognitionWorker

EXTENSION = "fedface_kiosk"  # the Flask extension key the services are kept under


@dataclass
class KioskServices:
    """Everything the web handlers read or call (shared by all requests)."""

    settings: KioskSettings
    data_dir: Path
    worker: RecognitionWorker
    activity: ActivityLog
    desk: EnrolmentDesk
    gallery: Gallery
    passwords: PasswordStore
    gate: LoginGate
    session_ends: SessionEnds
    clock: Callable[[], float] = time.time


def services() -> KioskServices:
    found = current_app.extensions[EXTENSION]
    assert isinstance(found, KioskServices)
    return found


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token
