"""Whether this box was revoked by the federation, as recorded in its data dir.

The federation client writes ``<data dir>/federation/revoked.json`` when it reads the
aggregator's signed revocation notice (``federation.messages``); ``doctor`` writes it
when the broker refuses the device certificate with the TLS alert "certificate
revoked". From then on the client no longer connects, and ``status``, ``doctor`` and
the kiosk (``revocation_state(data_dir)``) say so. Revocation is final for a device
id: the box is re-provisioned under a new id (a new data dir or a removed record).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from federation.files import PRIVATE_DIR, make_dirs, write_atomic

log = logging.getLogger(__name__)

REVOKED_FILE = "revoked.json"
FEDERATION_DIR = "federation"  # the client's state dir inside the data dir
REPROVISION = "re-provision the box under a new device id (fedface-edge provision)"


@dataclass(frozen=True)
class RevocationState:
    device_id: str
    revoked_at: float  # when the federation revoked it (aggregator clock; 0 if unknown)
    recorded_at: float  # when this box learnt it
    source: str  # "notice" (signed by the aggregator) or "tls" (broker refused the cert)
    detail: str

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.revoked_at
                                                                   or self.recorded_at))
        how = ("signed notice from the aggregator" if self.source == "notice"
               else "the broker refused the certificate as revoked")
        return f"this box ({self.device_id}) was revoked by the federation at {when} ({how})"


def record_path(state_dir: Path) -> Path:
    """The record in the federation client's state dir (``<data dir>/federation``)."""
    return Path(state_dir) / REVOKED_FILE


def record_revocation(state_dir: Path, device_id: str, *, source: str, revoked_at: float = 0.0,
                      detail: str = "") -> RevocationState:
    """Write the record (atomically, 0600); an earlier record is kept as it is."""
    existing = _read(record_path(state_dir))
    if existing is not None:
        return existing
    state = RevocationState(device_id, float(revoked_at), time.time(), source, detail[:300])
    make_dirs(Path(state_dir), PRIVATE_DIR)
    write_atomic(record_path(state_dir), json.dumps(state.__dict__, sort_keys=True).encode(),
                 mode=0o600)
    return state


def _read(path: Path) -> RevocationState | None:
    try:
        data = json.loads(path.read_text())
        return RevocationState(str(data["device_id"]), float(data.get("revoked_at") or 0.0),
                               float(data.get("recorded_at") or 0.0),
                               str(data.get("source") or "notice"), str(data.get("detail") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # unreadable but present: fail closed, the box was told something about revocation
        return RevocationState("?", 0.0, 0.0, "notice", f"unreadable {path}: {exc}")


def read_record(state_dir: Path) -> RevocationState | None:
    """The record in the federation client's state dir, or None."""
    return _read(record_path(state_dir))


def revocation_state(data_dir: Path) -> RevocationState | None:
    """None if this box has not learnt that it was revoked; else what it learnt. For the
    kiosk and the CLI: reads ``<data_dir>/federation/revoked.json`` only, no network."""
    return _read(record_path(Path(data_dir) / FEDERATION_DIR))
