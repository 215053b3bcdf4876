"""Model version and federation status as the kiosk shows them.

The model version is what the live embedder reports (it changes when a federated model
is swapped in) plus the versions the gallery holds embeddings of. Federation status is
read from the state the federation client persists under ``<data dir>/federation``
(``fedface-edge join``): the federated model store's ``current.json``. No such directory
means the box never joined a federation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FEDERATION_DIRNAME = "federation"  # as used by `fedface-edge join` (edge/cli/federate.py)
MODEL_STORE_DIRNAME = "federated"  # FederationClient's FederatedModelStore directory


@dataclass(frozen=True)
class FederationStatus:
    joined: bool
    model_version: str | None = None
    round_no: int | None = None
    problem: str | None = None

    @property
    def text(self) -> str:
        if self.problem:
            return f"joined; state unreadable ({self.problem})"
        if not self.joined:
            return "not joined"
        if self.model_version is None:
            return "joined; no federated model received yet"
        return f"joined; federated model {self.model_version} (round {self.round_no})"


def federation_status(data_dir: Path) -> FederationStatus:
    state_dir = Path(data_dir) / FEDERATION_DIRNAME
    if not state_dir.is_dir():
        return FederationStatus(joined=False)
    pointer = state_dir / MODEL_STORE_DIRNAME / "current.json"
    try:
        data = json.loads(pointer.read_text())
    except FileNotFoundError:
        return FederationStatus(joined=True)
    except (OSError, ValueError) as exc:
        log.warning("cannot read federation state %s: %s", pointer, exc)
        return FederationStatus(joined=True, problem=type(exc).__name__)
    if not isinstance(data, dict) or "version" not in data:
        return FederationStatus(joined=True, problem="no version in current.json")
    round_no = data.get("round")
    return FederationStatus(True, str(data["version"]),
                            int(round_no) if isinstance(round_no, int) else None)
