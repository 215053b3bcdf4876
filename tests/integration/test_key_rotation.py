"""Key epochs (issue 15, attack 5): after a revocation and a rotation the revoked box's
secret context cannot read the next result, and the remaining boxes complete that round.

Real Mosquitto, the real ``fedface-aggregator serve`` process, real CKKS, in-process
FederationClients as the boxes, every key step through the operator's and the key
holder's CLI (``devices recipients``, ``keys rotate``, ``keys install``). The revoked box
is left connected on purpose (a broker without ACLs, or a session the broker failed to
cut): what keeps it out is the key, not the broker.
"""

from __future__ import annotations

import dataclasses
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from edge.federated.epochs import epoch_keys_for
from federation.crypto.epochs import (
    EXCHANGE_KEY_NAME,
    exchange_public_hex,
    load_or_create_exchange_key,
    sign_exchange_key,
)
from federation.crypto.keys import KEYHOLDER_PUB_NAME, load_secret_context, read_private_key
from federation.crypto.packing import EncryptedUpdate, decrypt_average, decrypt_sums
from federation.errors import WRONG_KEY, FederationError
from tests.support.federation_rig import FED, Federation, run_cli, wait_for

pytestmark = pytest.mark.mosquitto
SLOW = 90.0  # condition waits; a loaded machine may be slow, a quiet one returns at once
BOXES = ("box-a", "box-b", "box-c")


def _box_keys(fed: Federation, name: str) -> Path:
    """A box's own keys dir, as provisioning leaves it: its copy of the secret context,
    its exchange key (0600), the key holder's public key. Returns the secret's path."""
    keys = fed.root / f"{name}-keys"
    keys.mkdir()
    secret = keys / "federation-secret.tenseal"
    shutil.copyfile(fed.secret_context, secret)
    secret.chmod(0o600)
    shutil.copyfile(fed.secret_context.parent / KEYHOLDER_PUB_NAME, keys / KEYHOLDER_PUB_NAME)
    return secret


def _register_exchange_key(fed: Federation, name: str, keys: Path) -> None:
    kx = exchange_public_hex(load_or_create_exchange_key(keys / EXCHANGE_KEY_NAME))
    sig = sign_exchange_key(read_private_key(fed.root / f"{name}.key"), FED, name, kx)
    # the rig registered the device without one; a box provisioned today sends it in its
    # request (edge.provision): the registry checks it against the device key either way
    from aggregator.state.registry import DeviceRegistry
    from aggregator.state.store import Store

    store = Store(fed.agg_state)
    try:
        DeviceRegistry(store).set_exchange_key(FED, name, kx, sig)
    finally:
        store.close()


def test_a_revoked_box_cannot_read_the_round_after_the_rotation(tmp_path: Path,
                                                                mosquitto) -> None:
    fed = Federation.create(tmp_path, mosquitto.url, list(BOXES))
    secrets = {name: _box_keys(fed, name) for name in BOXES}
    for name in BOXES:
        _register_exchange_key(fed, name, secrets[name].parent)
    boxes = {name: fed.start_box(name, secret_context=secrets[name],
                                 epochs=epoch_keys_for(FED, name, secrets[name]))
             for name in BOXES}
    # box-c plays the stolen copy: it ignores the revocation notice, which serve now sends
    # to a revoked box it hears from (an honest box stops there: test_revocation_unapplied)
    boxes["box-c"].client._acks._revoked = lambda notice: None  # type: ignore[method-assign]
    try:
        # round 1: all three, key epoch 0
        fed.start_aggregator(quorum=3, rounds=1)
        wait_for(lambda: all(b.event("applied", 1) for b in boxes.values()), SLOW,
                 "round 1 applied on every box", fed)
        assert fed.aggregator is not None and fed.aggregator.wait(SLOW) == 0
        old = load_secret_context(secrets["box-c"])

        # box-c is revoked; the key holder rotates to the others; the operator installs
        out = run_cli("devices", "revoke", "box-c", "--state", str(fed.agg_state))
        assert "still holds the federation's secret key: rotate it now" in out
        # a region's revocation is not seen at the root (helper-41): the command says so
        assert "in a hierarchy the key is the whole federation's" in out, out
        status = run_cli("status", "--no-broker", "--state", str(fed.agg_state))
        assert "KEY ROTATION DUE: box-c revoked after the current key" in status
        run_cli("devices", "recipients", "--state", str(fed.agg_state), "--out",
                str(tmp_path / "recipients.json"))
        out = run_cli("keys", "rotate", "--keys", str(fed.secret_context.parent),
                      "--recipients", str(tmp_path / "recipients.json"), "--fed", FED,
                      "--out", str(tmp_path / "epoch-1"))
        assert "box-c" not in out and "box-a" in out and "box-b" in out
        assert not (tmp_path / "epoch-1" / "sealed" / "box-c.ffsc").exists()
        run_cli("keys", "install", "--state", str(fed.agg_state), "--epoch",
                str(tmp_path / "epoch-1"))
        status = run_cli("status", "--no-broker", "--state", str(fed.agg_state))
        assert "KEY ROTATION DUE" not in status  # the new key's secret never reached box-c
        fed.start_aggregator(quorum=2, rounds=1)

        # the remaining boxes take the new epoch and complete the next round under it
        wait_for(lambda: all(boxes[n].event("key_epoch", 0) for n in ("box-a", "box-b")),
                 SLOW, "box-a and box-b took key epoch 1", fed)
        wait_for(lambda: all(boxes[n].event("applied", 2) for n in ("box-a", "box-b")), SLOW,
                 "round 2 applied on box-a and box-b", fed)
        a, b = (boxes[n].event("applied", 2) for n in ("box-a", "box-b"))
        assert a is not None and b is not None and a.data["updates"] == 2
        np.testing.assert_array_equal(a.data["vector"], b.data["vector"])
        new = load_secret_context(secrets["box-a"])
        assert (new.epoch, old.epoch) == (1, 0) and new.key_id != old.key_id
        assert stat.S_IMODE(secrets["box-a"].stat().st_mode) == 0o600

        # the revoked box, still connected, fetches the result and cannot read it
        wait_for(lambda: boxes["box-c"].event("result_rejected", 2) is not None, SLOW,
                 "box-c tried the round-2 result", fed)
        rejected = boxes["box-c"].event("result_rejected", 2)
        assert rejected is not None and rejected.data["reason"] == WRONG_KEY
        assert boxes["box-c"].event("applied", 2) is None
        assert load_secret_context(secrets["box-c"]).key_id == old.key_id  # no new key
        blob = (fed.agg_state / "blobs" / "round-2-result.bin").read_bytes()
        result = EncryptedUpdate.from_bytes(blob)
        assert result.key_id == new.key_id
        with pytest.raises(FederationError) as exc:
            decrypt_average(old, result)
        assert exc.value.reason == WRONG_KEY
        # stronger: the old secret forced onto the new ciphertexts gives noise, not weights
        forced = dataclasses.replace(result, key_id=old.key_id)
        weighted, count = decrypt_sums(old, forced)
        true_weighted, true_count = decrypt_sums(new, result)
        assert abs(count - true_count) > 1.0, (count, true_count)
        assert float(np.max(np.abs(weighted - true_weighted))) > 100.0
        assert float(np.corrcoef(weighted, true_weighted)[0, 1]) < 0.1
    finally:
        fed.stop()
