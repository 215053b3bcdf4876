"""Key epochs through the technician's and operator's own commands: ``fedface-edge
provision`` makes the box's exchange key (0600) and signs it into the request, takes the
key holder's public key from the bundle; ``devices add`` registers the exchange key;
``devices recipients`` -> ``keys rotate`` -> the sealed bundle opens with the box's own
files (``edge.federated.epochs.epoch_keys_for``, what ``join`` uses) and no other's."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.federated.epochs import epoch_keys_for
from federation.crypto.keys import load_secret_context
from federation.errors import FederationError
from tests.support.broker import MosquittoBroker
from tests.support.provisioning import FED, provision_box, start_federation

pytestmark = pytest.mark.mosquitto


def test_provisioned_boxes_can_take_a_rotation(tmp_path: Path, lfw_dir: Path,
                                                mosquitto_factory: Callable[..., MosquittoBroker]
                                                ) -> None:
    fed = start_federation(tmp_path, mosquitto_factory)
    camera = f"dir:{lfw_dir / 'Aaron_Peirsol'}"
    boxes = {d: provision_box(fed, d, camera) for d in ("box-1", "box-2")}
    for box in boxes.values():
        assert stat.S_IMODE((box / "keys" / "device-kx.key").stat().st_mode) == 0o600
        assert (box / "keys" / "keyholder.pub").read_bytes() == \
            (fed.secret_context.parent / "keyholder.pub").read_bytes()
    request = json.loads((boxes["box-1"] / "box-1.request.json").read_text())
    assert len(request["exchange_key"]) == 64 and len(request["exchange_sig"]) == 128

    code, out = fed.aggregator("devices", "recipients", "--state", str(fed.state), "--out",
                               str(tmp_path / "recipients.json"))
    assert code == 0 and "2 active device(s)" in out, out
    code, out = fed.aggregator("keys", "rotate", "--keys", str(fed.secret_context.parent),
                               "--recipients", str(tmp_path / "recipients.json"), "--fed", FED,
                               "--out", str(tmp_path / "epoch-1"), "--exclude", "box-2")
    assert code == 0, out
    sealed = (tmp_path / "epoch-1" / "sealed" / "box-1.ffsc").read_bytes()
    assert not (tmp_path / "epoch-1" / "sealed" / "box-2.ffsc").exists()

    secret = boxes["box-1"] / "keys" / "federation-secret.tenseal"
    current = load_secret_context(secret)
    keys = epoch_keys_for(FED, "box-1", secret)
    assert keys is not None
    new = keys.take(sealed, current)
    assert new is not None and new.epoch == 1 and new.key_id != current.key_id
    assert load_secret_context(secret).key_id == new.key_id
    # box-2's own files cannot open box-1's bundle
    other = boxes["box-2"] / "keys" / "federation-secret.tenseal"
    other_keys = epoch_keys_for(FED, "box-2", other)
    assert other_keys is not None
    with pytest.raises(FederationError) as exc:
        other_keys.take(sealed, load_secret_context(other))
    assert exc.value.reason == "wrong_recipient"
    assert load_secret_context(other).key_id == current.key_id
