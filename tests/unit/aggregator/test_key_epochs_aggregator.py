"""Key epochs at the aggregator (aggregator.rounds.epochs, aggregator.operator): a round
left open under the old key fails at the next start and the next round announces the
new key; each active box's sealed bundle is relayed, retained, on its own topic, a
revoked box's topic is cleared; ``keys install`` refuses an epoch that is not newer.
Real service on the in-memory bus, real CKKS contexts and sealed bundles."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from aggregator.operator import OperatorError, install_key_epoch
from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.config import init_state, load_config
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.crypto.epochs import (
    Recipient,
    exchange_public_hex,
    generate_exchange_key,
    open_context,
    rotate_keys,
    sign_exchange_key,
)
from federation.crypto.keys import (
    create_federation_keys,
    load_public_context,
    load_secret_context,
    read_public_key,
)
from federation.envelope import decode
from federation.transport.base import InMemoryBus
from tests.support.aggregator_rig import FED, make_service, registered_boxes


def _announce(bus: InMemoryBus) -> dict:
    return json.loads(decode(bus.retained[topics.announce(FED)]).payload)


def test_rotation_fails_the_old_round_relays_bundles_and_announces_the_new_key(
        tmp_path: Path) -> None:
    keys = create_federation_keys(tmp_path / "keys")
    state = tmp_path / "agg"
    init_state(state, FED, keys.public_context)
    store = Store(state)
    bus = InMemoryBus(synchronous=True)
    secret = load_secret_context(keys.secret_context)
    boxes = registered_boxes(bus, store, secret, 3)
    clock = [1_000_000.0]
    settings = RoundSettings(deadline_seconds=60, quorum=2, count_scale=64)
    service = make_service(bus, store, load_public_context(state / "federation-public.tenseal"),
                           settings, clock)
    service.start()
    ann = _announce(bus)
    assert (ann["round"], ann["key_id"]) == (1, secret.key_id) and "key_epoch" not in ann

    # box2 is revoked; the key holder seals epoch 1 to box0 and box1
    kx = {b.device_id: generate_exchange_key() for b in boxes}
    recipients = [Recipient(b.device_id, b.public_hex, exchange_public_hex(kx[b.device_id]),
                            sign_exchange_key(b.key, FED, b.device_id,
                                              exchange_public_hex(kx[b.device_id])))
                  for b in boxes]
    registry = DeviceRegistry(store)
    for r in recipients:
        registry.set_exchange_key(FED, r.device_id, r.exchange_key, r.exchange_sig)
    registry.revoke("box2")
    found, missing = registry.recipients()
    assert [d["device_id"] for d in found] == ["box0", "box1"] and missing == []
    # a bundle for box2 made anyway (say, before its revocation) is never relayed
    rot = rotate_keys(tmp_path / "keys", FED, recipients, tmp_path / "epoch-1")
    cfg, relayed, left = install_key_epoch(state, load_config(state), tmp_path / "epoch-1")
    assert (cfg.key_id, relayed, left) == (rot.key_id, ["box0", "box1"], [])
    assert not (state / "sealed" / "box2.ffsc").exists()
    with pytest.raises(OperatorError, match="already"):
        install_key_epoch(state, cfg, tmp_path / "epoch-1")

    # restart on the new public context: round 1 (old key) fails, round 2 is of the new key
    store.close()
    store = Store(state)
    bus.retained[topics.key(FED, "box2")] = b"an earlier epoch's bundle"
    service = make_service(bus, store, load_public_context(state / "federation-public.tenseal"),
                           settings, clock)
    service.start()
    assert store.get_round(1).status == "failed"
    assert store.get_round(1).close_reason == "key rotated"
    ann = _announce(bus)
    assert (ann["round"], ann["key_id"], ann["key_epoch"]) == (2, rot.key_id, 1)
    assert topics.key(FED, "box2") not in bus.retained  # cleared
    holder = read_public_key(tmp_path / "keys" / "keyholder.pub")
    for device in ("box0", "box1"):
        env = decode(bus.retained[topics.key(FED, device)])
        assert (env.kind, env.sender, env.round) == ("key", "aggregator", 1)
        ctx = open_context(env.payload, fed=FED, device_id=device, exchange_key=kx[device],
                           keyholder=holder, after_epoch=0)
        assert ctx.key_id == rot.key_id
    store.close()


def test_an_exchange_key_its_device_key_did_not_sign_is_refused_before_anything_is_added(
        tmp_path: Path) -> None:
    from aggregator.state.registry import RegistryError
    from federation.crypto.signing import generate_signing_key, public_key_hex

    store = Store(tmp_path)
    registry = DeviceRegistry(store)
    device, other = generate_signing_key(), generate_signing_key()
    kx = exchange_public_hex(generate_exchange_key())
    for signer, fed, dev in ((other, FED, "box-x"), (device, "other-fed", "box-x"),
                             (device, FED, "box-y")):
        with pytest.raises(RegistryError, match="not signed"):
            registry.add("box-x", bytes.fromhex(public_key_hex(device)), fed=FED,
                         exchange=(kx, sign_exchange_key(signer, fed, dev, kx)))
        assert registry.get("box-x") is None
    registry.add("box-x", bytes.fromhex(public_key_hex(device)), fed=FED,
                 exchange=(kx, sign_exchange_key(device, FED, "box-x", kx)))
    assert registry.recipients()[0][0]["exchange_key"] == kx
    store.close()


def test_the_round_after_a_rotation_rebuilds_the_model_under_the_new_key_with_every_box(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first base after a rotation is a result under the old key, which a box
    provisioned since cannot read: that round is open to every box (min_new_samples 0),
    so the boxes holding both keys retrain at once and the result, under the new key,
    serves every box (a walkthrough's replacement box waited on the pretrained model,
    every round skipped as 'nothing new', until someone enrolled on another box)."""
    keys = create_federation_keys(tmp_path / "keys")
    state = tmp_path / "agg"
    init_state(state, FED, keys.public_context)
    store = Store(state)
    bus = InMemoryBus(synchronous=True)
    boxes = registered_boxes(bus, store, load_secret_context(keys.secret_context), 2)
    clock = [1_000_000.0]
    settings = RoundSettings(deadline_seconds=60, quorum=2, count_scale=64,
                             min_new_samples=1)

    def start() -> AggregatorService:
        service = make_service(bus, store, load_public_context(
            state / "federation-public.tenseal"), settings, clock)
        service.start()
        return service

    def send_round(service: AggregatorService) -> dict:
        ann = _announce(bus)
        for i, box in enumerate(boxes):
            box.send(box.envelopes(box.encrypted_blob(np.full(100, i, np.float32), 10, 64),
                                   ann["round"], ann["base_model"]))
            service.pump()
        return ann

    service = start()
    assert _announce(bus)["min_new_samples"] == 1
    send_round(service)
    assert store.get_round(1).status == "published"  # type: ignore[union-attr]

    kx = {b.device_id: generate_exchange_key() for b in boxes}
    recipients = [Recipient(b.device_id, b.public_hex, exchange_public_hex(kx[b.device_id]),
                            sign_exchange_key(b.key, FED, b.device_id,
                                              exchange_public_hex(kx[b.device_id])))
                  for b in boxes]
    rotate_keys(tmp_path / "keys", FED, recipients, tmp_path / "epoch-1")
    install_key_epoch(state, load_config(state), tmp_path / "epoch-1")
    new_secret = load_secret_context(keys.secret_context)  # the key holder's new epoch
    for box in boxes:
        box.secret = new_secret
    service.close()
    with caplog.at_level(logging.INFO, logger="aggregator"):
        service = start()  # round 2 was open under the old key: failed; round 3 opens
    ann = _announce(bus)
    assert (ann["base_model"], ann["key_epoch"], ann["min_new_samples"]) == ("round-1", 1, 0)
    assert f"round {ann['round']} rebuilds round-1 under the current key (epoch 1)" \
        in caplog.text
    send_round(service)
    rebuilt = store.get_round(ann["round"])
    assert rebuilt is not None and rebuilt.status == "published"
    nxt = _announce(bus)  # built on the new key's result: back to the operator's setting
    assert nxt["base_model"] == rebuilt.result_model and nxt["min_new_samples"] == 1
    service.close()
    store.close()


def test_devices_add_refuses_a_box_of_an_older_or_other_key_and_notes_a_newer_one(
        tmp_path: Path) -> None:
    """A box provisioned from a bundle kept from before a rotation passed doctor, then sat
    out every round and needed a new device id: `devices add` checks the key its request
    names (aggregator.operator.check_request_key) before anything is registered."""
    from aggregator.operator import DeviceRequest, check_request_key

    keys = create_federation_keys(tmp_path / "keys")
    state = tmp_path / "agg"
    init_state(state, FED, keys.public_context)
    cfg = load_config(state)

    def request(key_id: str, epoch: int | None) -> DeviceRequest:
        return DeviceRequest("box-n", b"", b"\0" * 32, key_id=key_id, key_epoch=epoch)

    assert check_request_key(state, cfg, request(keys.key_id, 0)) == ""
    assert check_request_key(state, cfg, request("", None)) == ""  # an earlier release
    for epoch in (0, None):  # another key of this epoch, or of an unsaid one
        with pytest.raises(OperatorError, match="its bundle is of another key"):
            check_request_key(state, cfg, request("ab" * 16, epoch))
    note = check_request_key(state, cfg, request("ab" * 16, 1))
    assert "newer than this aggregator's" in note and "keys install" in note, note


def test_keys_install_is_refused_while_serve_holds_the_state(tmp_path: Path) -> None:
    """helper-57: `keys install` beside a running serve was taken without a word: status
    named the new key while serve went on under the old one, and the revoked box kept
    it. Now refused while serve holds the state's lock (another process here, as serve),
    nothing changed; once serve is stopped the same command goes on."""
    from typer.testing import CliRunner

    from aggregator.cli.main import app
    from tests.support.lock_holder import lock_held_elsewhere

    keys = create_federation_keys(tmp_path / "keys")
    state = tmp_path / "agg"
    init_state(state, FED, keys.public_context)
    before = (state / "config.json").read_bytes()
    install = ["keys", "install", "--state", str(state), "--epoch", str(tmp_path / "e1")]
    with lock_held_elsewhere(state / "serve.lock") as serve:  # as a running serve holds it
        refused = CliRunner().invoke(app, install)
        assert refused.exit_code == 2, refused.output
        assert f"`fedface-aggregator serve` (pid {serve}) runs on {state}: stop it " \
            "before installing a key epoch" in refused.output, refused.output
        assert "nothing was changed" in refused.output
        assert (state / "config.json").read_bytes() == before
    after = CliRunner().invoke(app, install)  # serve stopped: on to the epoch itself
    assert after.exit_code == 2 and "runs on" not in after.output, after.output
