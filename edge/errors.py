"""Typed errors of the edge inference path; each carries a ``hint`` saying how to fix it.

The CLI turns any ``FedFaceError`` into one line on stderr and a non-zero exit code.
(``models.registry.ModelError`` has the same shape; it lives in ``models`` because
``models`` never imports ``edge``.)
"""

from __future__ import annotations


class FedFaceError(Exception):
    """Base of the edge's expected failures: a message plus a hint for the user."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.hint = hint


class ImageReadError(FedFaceError):
    """An image file is missing, unreadable or not an image OpenCV can decode."""


class NoFaceError(FedFaceError):
    """An image that should show a face (enrolment) has none the detector can find."""
