"""What a region keeps and says beside its partial sums: ``regional.json`` (which root
round each region round's partial went to, and the root's name of each region model)
and its signed status on the root's broker (aggregator.regional.forwarder).

May import: federation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.chunking import one_envelope
from federation.envelope import encode
from federation.errors import MALFORMED, FederationError
from federation.files import write_atomic
from federation.messages import NO_NEW_SAMPLES, DeviceStatus
from federation.release import release

STATE_NAME = "regional.json"


def load_state(path: Path) -> dict[str, Any]:
    """``regional.json``: ``forwarded`` (region round -> the root round its partial went
    to, or whose result stands for it) and ``models`` (see ``root_models``)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        data = {}
    except ValueError as exc:
        raise FederationError(MALFORMED, f"{path} is corrupt ({exc}); it maps region "
                              "rounds to root rounds") from None
    return {"forwarded": dict(data.get("forwarded", {})), "models": dict(data.get("models", {}))}


def save_state(path: Path, state: dict[str, Any]) -> None:
    # round numbers and message ids, no device data
    write_atomic(path, json.dumps(state, sort_keys=True).encode(), mode=0o644)


def root_models(state_dir: Path) -> dict[str, str]:
    """This region's model versions -> the root's names of the same models (the same
    result under each level's own round numbers), as ``regional.json`` records them; {}
    for an aggregator that is no region (or a damaged file: the operator's list goes on)."""
    try:
        models = json.loads((Path(state_dir) / STATE_NAME).read_text()).get("models", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else {}


def region_status(fed_id: str, region_id: str, signing_key: Ed25519PrivateKey, state: str,
                  model: str = "", sitting_out: int | None = None) -> bytes:
    """The region's signed status for the root's broker (online / offline), saying the
    root round it sits out for want of new samples, if any."""
    not_joining = None if sitting_out is None else {"round": sitting_out,
                                                    "reason": NO_NEW_SAMPLES}
    body = DeviceStatus(state, region_id, model, time.time(), not_joining=not_joining,
                        release=release())
    return encode(one_envelope(body.to_json(), signing_key, kind="status", fed=fed_id,
                               sender=region_id, round=sitting_out or 0, model=model))
