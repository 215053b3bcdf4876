"""Typed errors of the federation contract.

Every rejection carries a short machine ``reason`` (used as a counter key by the
aggregator and the edge client, and in ``ack`` messages) plus a human message that says
what went wrong and, where possible, how to fix it.
"""

from __future__ import annotations

# Reason codes. Stable strings: they are counted, logged and sent in acks.
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_DEVICE = "unknown_device"
WRONG_FEDERATION = "wrong_federation"
WRONG_KEY = "wrong_key"
INTEGRITY = "integrity"
OVERSIZED = "oversized"
OUT_OF_RANGE = "out_of_range"
STALE_VERSION = "stale_version"
LATE = "late"
DUPLICATE = "duplicate"
REPLAY = "replay"
# the aggregator could not take the update for now (disk full, restarting workers): resend
UNAVAILABLE = "unavailable"
SECRET_KEY_REFUSED = "secret_key_refused"
PUBLIC_KEY_CANNOT_DECRYPT = "public_key_cannot_decrypt"
INSECURE_KEY_FILE = "insecure_key_file"
KEY_FILE = "key_file"
NOT_CONNECTED = "not_connected"
QUEUE_FULL = "queue_full"
PUBLISH_TIMEOUT = "publish_timeout"
# a regional aggregator's closed round waits for the root's result (expected, not a fault)
AWAITING_ROOT = "awaiting_root"
# ... and the root builds on its initial model (pinned there): no result of it will come
ROOT_ON_INITIAL = "root_on_initial"
PUBLISH_REFUSED = "publish_refused"
CANNOT_ENCRYPT = "cannot_encrypt"
BAD_URL = "bad_url"

REASONS: frozenset[str] = frozenset(
    {
        MALFORMED,
        BAD_SIGNATURE,
        UNKNOWN_DEVICE,
        WRONG_FEDERATION,
        WRONG_KEY,
        INTEGRITY,
        OVERSIZED,
        OUT_OF_RANGE,
        STALE_VERSION,
        LATE,
        DUPLICATE,
        REPLAY,
        SECRET_KEY_REFUSED,
        PUBLIC_KEY_CANNOT_DECRYPT,
        INSECURE_KEY_FILE,
        KEY_FILE,
        NOT_CONNECTED,
        QUEUE_FULL,
        PUBLISH_TIMEOUT,
        AWAITING_ROOT,
        ROOT_ON_INITIAL,
        PUBLISH_REFUSED,
        CANNOT_ENCRYPT,
        BAD_URL,
    }
)


class FederationError(Exception):
    """A federation message, key or transport problem with a reason code.

    ``reason`` is one of the constants of this module (free-form strings are allowed
    for callers' own reasons such as round-logic rejections); ``message`` is for humans.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        self.message = message or reason
        super().__init__(f"{reason}: {self.message}")


class KeyFileError(FederationError):
    """A key or context file is missing, unreadable, of the wrong kind or too open."""


class TransportError(FederationError):
    """The message transport (MQTT broker link) could not do what was asked."""
