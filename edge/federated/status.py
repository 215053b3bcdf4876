"""The box's status message: retained on its status topic, signed by the box, read by the
operator's ``fedface-aggregator status`` (docs/protocol.md).

It says whether the box is online (the broker publishes the "offline" version as the
box's will), which model it serves, why it is not joining the open round, the hot swap's
last swap or refusal, and the differential-privacy budget this box has spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.federated.sealing import load_ledger
from federation.chunking import one_envelope
from federation.envelope import encode
from federation.errors import FederationError
from federation.messages import DeviceStatus
from federation.release import release
from federation.verdicts import Verdict

log = logging.getLogger(__name__)


class BoxStatus:
    def __init__(self, signing_key: Ed25519PrivateKey, fed_id: str, device_id: str,
                 ledger_path: Path,
                 sink_fields: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.signing_key = signing_key
        self.fed_id = fed_id
        self.device_id = device_id
        self.ledger_path = ledger_path  # the DP budget spent (edge.federated.sealing)
        self.sink_fields = sink_fields  # e.g. the hot swap's serving model and last swap
        self.release = release()  # the operator sees which boxes an upgrade has reached

    def payload(self, state: str, model: str, round_no: int,
                not_joining: Mapping[str, Any],
                verdicts: list[Verdict] | None = None) -> bytes:
        """The signed envelope for ``state`` (online/offline); ``verdicts``: what the
        recent rounds did for the box (federation.verdicts)."""
        sink: dict[str, Any] = {}
        if self.sink_fields is not None:
            try:
                sink = dict(self.sink_fields())
            except Exception:  # a status must go out even if the sink's part fails
                log.exception("sink status fields failed")
        body = DeviceStatus(state, self.device_id, model, time.time(),
                            not_joining=dict(not_joining) or None,
                            verdicts=tuple(verdicts or ()), dp=self.privacy_report(),
                            sink=sink, release=self.release).to_json()
        env = one_envelope(body, self.signing_key, kind="status", fed=self.fed_id,
                           sender=self.device_id, round=round_no, model=model)
        return encode(env)

    def privacy_report(self) -> dict[str, Any] | None:
        """Differential-privacy budget this box has spent (None: never sent a DP update)."""
        if not self.ledger_path.exists():
            return None
        try:
            return load_ledger(self.ledger_path).report()
        except FederationError as exc:
            log.error("%s", exc.message)
            return {"error": exc.message}
