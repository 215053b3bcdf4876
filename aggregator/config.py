"""The aggregator's state directory: config, public CKKS context, signing key.

Layout (created by ``fedface-aggregator init``)::

    config.json                 federation id, aggregator id, round defaults
    federation-public.tenseal   the public-only CKKS context (0644)
    aggregator.key              Ed25519 signing key (0600): signs announce/ack/result
    aggregator.pub              its public key (PEM): give it to every box
    state.db, blobs/, spool/    see store.py / spool.py
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.store import Store, StoreError, write_atomic
from federation import topics
from federation.ckks import FederationContext
from federation.keys import (
    PUBLIC_CONTEXT_NAME,
    load_public_context,
    read_private_key,
    write_private_key,
    write_public_key,
)
from federation.packing import DEFAULT_COUNT_SCALE

CONFIG_NAME = "config.json"
KEY_NAME = "aggregator.key"
PUB_NAME = "aggregator.pub"


@dataclass(frozen=True)
class AggregatorConfig:
    fed: str
    key_id: str
    aggregator_id: str = "aggregator"
    initial_model: str = "base"
    count_scale: float = DEFAULT_COUNT_SCALE
    part_key: str = ""
    vector_length: int | None = None


def init_state(
    state_dir: Path,
    fed: str,
    public_context: Path,
    *,
    aggregator_id: str = "aggregator",
    initial_model: str = "base",
    count_scale: float = DEFAULT_COUNT_SCALE,
    part_key: str = "",
    vector_length: int | None = None,
) -> AggregatorConfig:
    """Create a state directory. Refuses a secret context and an existing state."""
    topics.prefix(fed)  # validates the federation id
    topics.ack(fed, aggregator_id)  # validates the aggregator id as a topic level
    if count_scale <= 0:
        raise ValueError("count scale must be > 0")
    ctx = load_public_context(public_context)  # raises secret_key_refused for a secret one
    state_dir = Path(state_dir)
    if (state_dir / CONFIG_NAME).exists():
        raise StoreError(f"{state_dir} is already initialised (found {CONFIG_NAME})")
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public_context, state_dir / PUBLIC_CONTEXT_NAME)
    key = Ed25519PrivateKey.generate()
    write_private_key(state_dir / KEY_NAME, key)
    write_public_key(state_dir / PUB_NAME, key.public_key())
    cfg = AggregatorConfig(
        fed, ctx.key_id, aggregator_id, initial_model, count_scale, part_key, vector_length
    )
    write_atomic(state_dir / CONFIG_NAME, json.dumps(asdict(cfg), indent=2).encode())
    Store(state_dir).close()
    return cfg


def load_config(state_dir: Path) -> AggregatorConfig:
    path = Path(state_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
        return AggregatorConfig(**data)
    except FileNotFoundError:
        raise StoreError(
            f"{state_dir} is not an aggregator state directory: run `fedface-aggregator init`"
        ) from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise StoreError(f"{path} is corrupt: {exc}") from None


def load_context(state_dir: Path, cfg: AggregatorConfig) -> FederationContext:
    ctx = load_public_context(Path(state_dir) / PUBLIC_CONTEXT_NAME)
    if ctx.key_id != cfg.key_id:
        raise StoreError(
            f"the public context in {state_dir} is of key {ctx.key_id}, config says {cfg.key_id}"
        )
    return ctx


def load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    return read_private_key(Path(state_dir) / KEY_NAME)
