"""Key epochs (federation.crypto.epochs): a new secret context sealed to one box alone.

Real X25519/HPKE and Ed25519 from ``cryptography`` and real TenSEAL contexts: the bundle
opens only for the device, exchange key and federation it names, only if the key holder
signed it, only for a newer epoch, and any changed byte fails it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from federation.crypto.ckks import load_context, new_secret_context, secret_context_bytes
from federation.crypto.epochs import (
    OLD_EPOCH,
    WRONG_RECIPIENT,
    Recipient,
    exchange_public_hex,
    generate_exchange_key,
    open_context,
    read_exchange_key,
    read_header,
    read_recipients,
    rotate_keys,
    seal_context,
    sign_exchange_key,
    verify_exchange_key,
    write_exchange_key,
)
from federation.crypto.keys import create_federation_keys, load_secret_context, read_public_key
from federation.crypto.packing import decrypt_average, encrypt_update
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.errors import BAD_SIGNATURE, WRONG_KEY, FederationError, KeyFileError

FED = "fed-epochs"


@pytest.fixture(scope="module")
def new_ctx():
    return new_secret_context(epoch=1)


def _seal(ctx, device="box-a", kx=None, keyholder=None, fed=FED):
    kx = kx or generate_exchange_key()
    keyholder = keyholder or generate_signing_key()
    data = seal_context(ctx, secret_context_bytes(ctx), fed=fed, device_id=device,
                        recipient=kx.public_key(), keyholder=keyholder)
    return data, kx, keyholder


def test_the_named_box_opens_the_new_context_and_it_decrypts(new_ctx) -> None:
    data, kx, holder = _seal(new_ctx)
    ctx = open_context(data, fed=FED, device_id="box-a", exchange_key=kx,
                       keyholder=holder.public_key(), after_epoch=0)
    assert (ctx.key_id, ctx.epoch) == (new_ctx.key_id, 1)
    w = np.linspace(-1, 1, 100, dtype=np.float32)
    out = decrypt_average(ctx, encrypt_update(new_ctx, w, 10))
    assert np.max(np.abs(out - w)) < 1e-4
    assert read_header(data).device == "box-a"
    assert b"box-a" in data and secret_context_bytes(new_ctx)[-200:] not in data


def test_another_box_cannot_open_it(new_ctx) -> None:
    data, _kx, holder = _seal(new_ctx)
    other = generate_exchange_key()
    # as itself: the header names another device
    with pytest.raises(FederationError) as exc:
        open_context(data, fed=FED, device_id="box-b", exchange_key=other,
                     keyholder=holder.public_key(), after_epoch=0)
    assert exc.value.reason == WRONG_RECIPIENT
    # pretending to be box-a with its own key: the recipient key in the header differs
    with pytest.raises(FederationError) as exc:
        open_context(data, fed=FED, device_id="box-a", exchange_key=other,
                     keyholder=holder.public_key(), after_epoch=0)
    assert exc.value.reason == WRONG_RECIPIENT


def test_binding_to_device_id_and_federation(new_ctx) -> None:
    data, kx, holder = _seal(new_ctx, device="box-a")
    for fed, dev in (("other-fed", "box-a"), (FED, "box-c")):
        with pytest.raises(FederationError) as exc:
            open_context(data, fed=fed, device_id=dev, exchange_key=kx,
                         keyholder=holder.public_key(), after_epoch=0)
        assert exc.value.reason == WRONG_RECIPIENT


def test_a_header_rewritten_to_another_device_fails_even_if_re_signed(new_ctx) -> None:
    """The device id is bound into HPKE's info, not only covered by the signature: box-a's
    bundle re-labelled box-b (even re-signed) does not open with box-a's exchange key."""
    data, kx, holder = _seal(new_ctx, device="box-a")
    forged = data[:-64].replace(b'"device":"box-a"', b'"device":"box-b"')
    forged += holder.sign(forged)
    with pytest.raises(FederationError) as exc:
        open_context(forged, fed=FED, device_id="box-b", exchange_key=kx,
                     keyholder=holder.public_key(), after_epoch=0)
    assert exc.value.reason == WRONG_RECIPIENT


@pytest.mark.parametrize("where", [20, 200, -100, -1])
def test_any_changed_byte_is_refused(new_ctx, where: int) -> None:
    data, kx, holder = _seal(new_ctx)
    bad = bytearray(data)
    bad[where] ^= 0x01
    with pytest.raises(FederationError) as exc:
        open_context(bytes(bad), fed=FED, device_id="box-a", exchange_key=kx,
                     keyholder=holder.public_key(), after_epoch=0)
    assert exc.value.reason in (BAD_SIGNATURE, "malformed")


def test_only_the_key_holder_may_seal(new_ctx) -> None:
    """HPKE base mode does not say who sealed: an aggregator sealing a context it knows
    to a box is refused by the key holder's signature."""
    data, kx, _holder = _seal(new_ctx, keyholder=generate_signing_key())
    with pytest.raises(FederationError) as exc:
        open_context(data, fed=FED, device_id="box-a", exchange_key=kx,
                     keyholder=generate_signing_key().public_key(), after_epoch=0)
    assert exc.value.reason == BAD_SIGNATURE


def test_a_replayed_older_epoch_is_refused(new_ctx) -> None:
    data, kx, holder = _seal(new_ctx)
    for current in (1, 2):
        with pytest.raises(FederationError) as exc:
            open_context(data, fed=FED, device_id="box-a", exchange_key=kx,
                         keyholder=holder.public_key(), after_epoch=current)
        assert exc.value.reason == OLD_EPOCH


def test_exchange_key_file_is_private_and_signed_by_the_device(tmp_path: Path) -> None:
    kx = generate_exchange_key()
    path = write_exchange_key(tmp_path / "device-kx.key", kx)
    assert path.stat().st_mode & 0o777 == 0o600
    assert exchange_public_hex(read_exchange_key(path)) == exchange_public_hex(kx)
    path.chmod(0o644)
    with pytest.raises(KeyFileError):
        read_exchange_key(path)
    device = generate_signing_key()
    sig = sign_exchange_key(device, FED, "box-a", exchange_public_hex(kx))
    verify_exchange_key(device.public_key(), FED, "box-a", exchange_public_hex(kx), sig)
    for dev, key in (("box-b", device.public_key()), ("box-a", generate_signing_key()
                                                      .public_key())):
        with pytest.raises(FederationError) as exc:
            verify_exchange_key(key, FED, dev, exchange_public_hex(kx), sig)
        assert exc.value.reason == BAD_SIGNATURE


def test_rotation_seals_to_each_recipient_and_replaces_the_key_holders_keys(
        tmp_path: Path) -> None:
    keys = create_federation_keys(tmp_path / "keys")
    old = load_secret_context(keys.secret_context)
    boxes = {}
    recipients = []
    for dev in ("box-a", "box-b", "box-c"):
        sk, kx = generate_signing_key(), generate_exchange_key()
        boxes[dev] = kx
        recipients.append(Recipient(dev, public_key_hex(sk), exchange_public_hex(kx),
                                    sign_exchange_key(sk, FED, dev, exchange_public_hex(kx))))
    listing = json.dumps({"fed": FED, "devices": [r.__dict__ for r in recipients]}).encode()
    rot = rotate_keys(tmp_path / "keys", FED, read_recipients(listing, FED),
                      tmp_path / "epoch-1", exclude=frozenset({"box-c"}))
    assert set(rot.sealed) == {"box-a", "box-b"} and rot.epoch == 1
    new = load_secret_context(keys.secret_context)
    assert (new.key_id, new.epoch) == (rot.key_id, 1) and new.key_id != old.key_id
    assert load_context(rot.public_context.read_bytes()).key_id == rot.key_id
    holder = read_public_key(tmp_path / "keys" / "keyholder.pub")
    got = open_context(rot.sealed["box-a"].read_bytes(), fed=FED, device_id="box-a",
                       exchange_key=boxes["box-a"], keyholder=holder, after_epoch=0)
    assert got.key_id == rot.key_id
    # the old secret cannot read what the new one encrypted: wrong_key, and forced, garbage
    enc = encrypt_update(new, np.ones(50, dtype=np.float32), 10)
    with pytest.raises(FederationError) as exc:
        decrypt_average(old, enc)
    assert exc.value.reason == WRONG_KEY
    # a recipient whose exchange key its device key did not sign stops the rotation
    forged = Recipient("box-d", recipients[0].signing_key, recipients[1].exchange_key,
                       recipients[1].exchange_sig)
    with pytest.raises(FederationError) as exc:
        rotate_keys(tmp_path / "keys", FED, [forged], tmp_path / "epoch-2")
    assert exc.value.reason == BAD_SIGNATURE
    assert load_secret_context(keys.secret_context).key_id == rot.key_id  # unchanged
