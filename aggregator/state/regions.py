"""Root side of hierarchical aggregation: regional aggregators registered like devices.

CKKS addition is associative, so a regional aggregator can sum its region's updates and
forward ONE encrypted partial sum (``EncryptedUpdate.n_updates`` = the updates it holds)
to a root aggregator, which adds it like an update (``aggregator.regional.forwarder`` is the
regional side). The root:

- registers each regional aggregator in its device registry (its Ed25519 key, so the
  partial's signature, duplicate and replay checks are the devices' ones) AND in the
  ``regions`` list kept in the store's meta table;
- accepts envelopes of kind ``partial`` only from a registered region, and kind
  ``update`` only with exactly one update inside (a box cannot pose as a region to
  inflate the round's update count);
- counts a partial as its ``n_updates`` contributions towards the quorum (and
  ``contributions.updates`` keeps that count, so the operator's ``status`` and ``rounds``
  show updates, not messages).
"""

from __future__ import annotations

import json

from aggregator.state.registry import DeviceRegistry, validate_device_id
from aggregator.state.store import Store
from federation.crypto.packing import claimed_updates

_META_KEY = "regions"


def region_ids(store: Store) -> set[str]:
    raw = store.get_meta(_META_KEY)
    return set(json.loads(raw)) if raw else set()


def add_region(store: Store, region_id: str, public_key: bytes) -> None:
    """Register a regional aggregator (its signing key, e.g. its ``aggregator.pub``)."""
    validate_device_id(region_id)
    DeviceRegistry(store).add(region_id, public_key)
    store.set_meta(_META_KEY, json.dumps(sorted(region_ids(store) | {region_id})))


def kind_problem(store: Store, sender: str, kind: str, blob: bytes) -> str | None:
    """Why this sender may not send this kind of blob (None: it may)."""
    if kind == "partial":
        if sender not in region_ids(store):
            return (f"{sender} sent a partial sum but is not a registered regional "
                    "aggregator (fedface-aggregator regions add)")
        return None
    if kind == "update" and claimed_updates(blob) != 1:
        return (f"an update must hold exactly one box's update, this one claims "
                f"{claimed_updates(blob)}; partial sums come from regional aggregators")
    return None
