"""Key epochs at the aggregator: it relays them, it can open none of them.

After the key holder rotates the federation's CKKS key (``federation.crypto.epochs``)
and the operator installs the new epoch (``fedface-aggregator keys install``: the new
public context and one sealed bundle per remaining box, into ``<state>/sealed/``), the
service, when it starts:

- fails a round left open under the earlier key (its updates are of a key the revoked
  box holds, and the new public context cannot add them), so the next round opens under
  the new key and announces it (``key_id``, ``key_epoch``);
- publishes each active box's sealed bundle, signed, retained, on ``key/<device>``,
  which only that box may read (broker ACL) and only that box can open; a revoked box's
  topic is cleared.

May import: aggregator.state, federation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aggregator.state.config import SEALED_SUFFIX as SUFFIX
from aggregator.state.config import sealed_dir
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.chunking import split_blob
from federation.crypto.epochs import read_header
from federation.envelope import encode
from federation.errors import FederationError

if TYPE_CHECKING:
    from aggregator.rounds.publisher import Publisher
    from aggregator.state.db import RoundRow

log = logging.getLogger(__name__)

def _same_key(was_key: str, key_id: str, epoch: int) -> bool:
    # an announce without key_id is from before key epochs: epoch 0's key
    return not key_id or was_key == key_id or (not was_key and epoch == 0)


def fail_if_old_key(store: Store, row: RoundRow, was_key: str, key_id: str, epoch: int,
                    now: float) -> bool:
    """Fail the open round ``row`` if it was announced under a key other than ``key_id``."""
    if _same_key(was_key, key_id, epoch):
        return False
    store.update_round(row.round, status="failed", closed_at=now, close_reason="key rotated")
    store.drop_accepted(row.round)
    store.record_rejection(row.round, None, "round_failed", "key rotated")
    log.warning("round %d was opened under key %s; the federation is now on key %s (epoch "
                "%d): round failed, a new round follows", row.round, was_key, key_id, epoch)
    return True


def under_earlier_key(store: Store, base: str, key_id: str, epoch: int) -> bool:
    """Whether the published result ``base`` is encrypted under an earlier key epoch than
    ``key_id``: the boxes provisioned since the rotation hold only the new key and cannot
    read it. The round that builds on it is opened to every box (``min_new_samples`` 0):
    the boxes that hold both keys retrain once and the result, under the new key, serves
    every box. Waiting for new samples instead, a walkthrough's replacement box sat on the
    pretrained model with its site's people unfederated, every round skipped as "nothing
    new", until someone was enrolled on another box."""
    row = next((r for r in store.list_rounds()
                if r.status == "published" and r.result_model == base), None)
    return row is not None and not _same_key(str(row.announce.get("key_id") or ""),
                                             key_id, epoch)


def relay_sealed(publisher: Publisher, store: Store, key_id: str) -> dict[str, int]:
    """Publish every active device's sealed bundle of ``key_id`` (retained, signed);
    clear the key topic of revoked devices. Returns bytes published per device."""
    registry = DeviceRegistry(store)
    sent: dict[str, int] = {}
    folder = sealed_dir(store.state_dir)
    for device in registry.list():
        topic = topics.key(publisher.fed_id, device.device_id)
        path = folder / f"{device.device_id}{SUFFIX}"
        if not device.active:
            publisher.transport.publish(topic, b"", retain=True)  # nothing left for it
            continue
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            header = read_header(data)
        except FederationError as exc:
            log.error("sealed key epoch %s is unreadable (%s); not relayed", path, exc.message)
            continue
        if header.key_id != key_id or header.device != device.device_id:
            continue  # an earlier epoch's bundle, left behind
        for env in split_blob(data, publisher.signing_key, kind="key", fed=publisher.fed_id,
                              sender=publisher.aggregator_id, round=header.epoch,
                              model=header.key_id, chunk_size=len(data)):
            publisher.transport.publish(topic, encode(env), retain=True)
        sent[device.device_id] = len(data)
    if sent:
        log.info("relayed key epoch %s to %d box(es)", key_id, len(sent))
    return sent
