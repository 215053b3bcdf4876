"""Typed errors of the edge inference path; each carries a ``hint`` saying how to fix it.

The CLI turns any ``FedFaceError`` into one line on stderr and a non-zero exit code.
(``models.registry.ModelError`` has the same shape; it lives in ``models`` because
``models`` never imports ``edge``.)

May import: federation.
"""

from __future__ import annotations

from federation.errors import FederationError


class FedFaceError(Exception):
    """Base of the edge's expected failures: a message plus a hint for the user."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.message = message  # without the hint: for output that prints it on its own
        self.hint = hint


class ImageReadError(FedFaceError):
    """An image file is missing, unreadable or not an image OpenCV can decode."""


class NoFaceError(FedFaceError):
    """An image that should show a face (enrolment) has none the detector can find."""


# A federation error (the box refuses a round's result) rather than a FedFaceError; it
# lives here, not in edge.federated, so that the hot swap (edge.serving) can raise it too.
class ResultRejected(FederationError):
    """A decrypted federated result failed validation and was not applied."""
