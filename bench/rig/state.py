"""A bench federation on disk: CKKS keys, the aggregator's initialised state and one
Ed25519 signing key per emulated device (``box0``, ``box1``, ...), registered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federation.crypto.packing import DEFAULT_COUNT_SCALE

FED = "benchfed"
COUNT_SCALE = DEFAULT_COUNT_SCALE  # what the aggregator announces (single source of truth)


@dataclass
class Federation:
    root: Path
    state: Path
    secret_path: Path
    key_dir: Path  # the devices' signing keys, <device>.key
    devices: list[str] = field(default_factory=list)


def make_federation(root: Path, n_devices: int, keys: Path | None = None) -> Federation:
    """New CKKS keys in ``root/keys``, or the existing ones in ``keys`` (benches that
    encrypt their updates once and reuse them across runs)."""
    from aggregator.state.config import init_state
    from aggregator.state.registry import DeviceRegistry
    from aggregator.state.store import Store
    from federation.crypto.keys import (
        PUBLIC_CONTEXT_NAME,
        SECRET_CONTEXT_NAME,
        create_federation_keys,
        write_private_key,
    )
    from federation.crypto.signing import generate_signing_key, public_key_hex

    if keys is None:
        keys = root / "keys"
        create_federation_keys(keys)
    state = root / "state"
    init_state(state, FED, keys / PUBLIC_CONTEXT_NAME, count_scale=COUNT_SCALE)
    store = Store(state)
    fed = Federation(root, state, keys / SECRET_CONTEXT_NAME, root / "devices")
    for i in range(n_devices):
        dev = f"box{i}"
        key = generate_signing_key()
        write_private_key(fed.key_dir / f"{dev}.key", key)
        DeviceRegistry(store).add(dev, bytes.fromhex(public_key_hex(key)))
        fed.devices.append(dev)
    store.close()
    return fed


def device_index(device: str) -> int:
    return int(device[3:])


def box_vector(device_index: int, round_no: int, length: int) -> tuple[np.ndarray, int]:
    """The synthetic update (weights, sample count) of a device in a round."""
    rng = np.random.default_rng(device_index * 1000 + round_no)
    return rng.normal(0, 0.1, length).astype(np.float32), 100 + 10 * device_index
