"""Model version and federation status as the kiosk shows them.

The model version is what the live embedder reports (it changes when a federated model
is swapped in) plus the versions the gallery holds embeddings of. Federation status:
joined when the federation client's state dir ``<data dir>/federation`` exists
(``fedface-edge join``; none means the box never joined), and the federated model is
what the box's one store of model versions serves (``<data dir>/models``,
edge.serving.versions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FEDERATION_DIRNAME = "federation"  # as used by `fedface-edge join` (edge/cli/federate.py)
MODELS_DIRNAME = "models"  # the box's model versions (edge.box.MODELS_DIRNAME)


@dataclass(frozen=True)
class FederationStatus:
    joined: bool
    model_version: str | None = None
    round_no: int | None = None
    problem: str | None = None
    revoked: str | None = None  # what the box learnt of its revocation (edge.federated.revocation)
    last_round: str | None = None  # its verdict on the last round (edge.federated.verdicts)
    threshold: float | None = None  # the served model's own (edge.serving.calibration)

    @property
    def text(self) -> str:
        if self.revoked:
            return f"REVOKED: {self.revoked}; re-provision the box under a new device id"
        if self.problem:
            return f"joined; state unreadable ({self.problem})"
        if not self.joined:
            return "not joined"
        if self.model_version is None:
            return "joined; no federated model received yet"
        if self.round_no is None:
            return f"joined; model {self.model_version}"
        own = "" if self.threshold is None else f", match threshold {self.threshold:.3f}"
        return f"joined; federated model {self.model_version} (round {self.round_no}{own})"


def federation_status(data_dir: Path) -> FederationStatus:
    from edge.federated.revocation import revocation_state
    from edge.federated.verdicts import RoundVerdicts
    from edge.serving.versions import BASE_VERSION, ModelStoreError, SwapStore
    from federation.messages import result_round

    state_dir = Path(data_dir) / FEDERATION_DIRNAME
    if not state_dir.is_dir():
        return FederationStatus(joined=False)
    revoked = revocation_state(data_dir)
    verdicts = RoundVerdicts(state_dir).recent()
    judged = [v for v in verdicts if v.judged]
    said = revoked.summary() if revoked is not None else None
    last = judged[-1].summary() if judged else None
    models_dir = Path(data_dir) / MODELS_DIRNAME
    try:
        pointer = SwapStore(models_dir).load() if models_dir.is_dir() else None
    except ModelStoreError as exc:
        log.warning("cannot read the box's model versions: %s", exc)
        return FederationStatus(joined=True, problem="model versions unreadable",
                                revoked=said, last_round=last)
    if pointer is None or pointer.current.version == BASE_VERSION:
        return FederationStatus(joined=True, revoked=said, last_round=last)
    version = pointer.current.version
    return FederationStatus(True, version, result_round(version), revoked=said,
                            last_round=last, threshold=pointer.current.threshold)
