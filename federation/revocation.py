"""The aggregator's revocation notice: "this device was revoked by the federation".

``fedface-aggregator devices revoke`` publishes it on the device's own ``ack/<device>``
topic (the one topic only that device reads) as a signed ``ack`` envelope, just before
the broker cuts the device's live session. A box that reads it records the revocation,
stops reconnecting and says so in ``fedface-edge status`` / ``doctor``. Boxes that
predate it ignore it: it carries no ``msg`` and no ``round``, which an ack needs to be
acted on.

The notice is a courtesy to an honest box; it does not enforce anything. Enforcement is
the broker's (CRL at the TLS handshake, plus the kick of the live session) and the
aggregator's (the registry refuses the device's updates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

REVOKED_REASON = "revoked"


@dataclass(frozen=True)
class RevocationNotice:
    device: str
    revoked_at: float
    detail: str


def notice_body(device: str, *, revoked_at: float | None = None,
                detail: str = "") -> dict[str, Any]:
    """The JSON body of the notice (an ack body: accepted false, reason revoked)."""
    return {
        "device": device,
        "round": None,
        "msg": None,
        "accepted": False,
        "reason": REVOKED_REASON,
        "revoked": True,
        "revoked_at": time.time() if revoked_at is None else float(revoked_at),
        "detail": detail or (f"device {device!r} was revoked by the federation operator; "
                             "re-provision the box under a new device id"),
    }


def parse_notice(body: dict[str, Any], device: str) -> RevocationNotice | None:
    """The notice in an ack body addressed to ``device``, or None if the body is not a
    revocation notice for it (a normal ack, or a notice for another device id)."""
    if body.get("reason") != REVOKED_REASON or body.get("revoked") is not True:
        return None
    if body.get("device") != device:
        return None
    at = body.get("revoked_at")
    revoked_at = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
    detail = "".join(c for c in str(body.get("detail") or "") if c.isprintable())[:300]
    return RevocationNotice(device, revoked_at, detail)
