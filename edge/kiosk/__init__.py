"""The kiosk web page for security staff (Flask): live view, alerts, enrolment, people.

``build_kiosk(edge_settings, kiosk_settings, source_uri).start()`` runs it; the CLI is
``fedface-edge kiosk serve`` (and ``fedface-edge kiosk set-password``).

May import: edge.errors, edge.http_thread, edge.config, edge.box, edge.vision,
edge.gallery, edge.serving, edge.tracking, edge.federated, federation, models.
"""

from __future__ import annotations

from edge.kiosk.server import Kiosk, KioskStartError, build_kiosk
from edge.kiosk.settings import KioskSettings

__all__ = ["Kiosk", "KioskSettings", "KioskStartError", "build_kiosk"]
