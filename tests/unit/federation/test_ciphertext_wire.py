"""The bit-packed ciphertext codec (federation.crypto.wire) against real TenSEAL/SEAL."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal as ts

from federation.crypto import wire
from federation.crypto.ckks import CkksParams, FederationContext, new_secret_context
from federation.crypto.packing import (
    UPDATE_MAGIC,
    EncryptedUpdate,
    encrypt_update,
    load_ciphertext,
    wire_widths,
)
from federation.errors import FederationError


@pytest.fixture(scope="module")
def secret() -> FederationContext:
    return new_secret_context()


def _vector(ctx: FederationContext, seed: int) -> tuple[np.ndarray, ts.CKKSVector]:
    x = np.random.default_rng(seed).normal(0.0, 1.0, ctx.params.slots)
    return x, ts.ckks_vector(ctx.context, x.tolist())


@pytest.mark.parametrize("params", [
    CkksParams(),  # one 38-bit data prime: 4 whole bytes + 6 bits per coefficient
    CkksParams(8192, (60, 40, 40, 60), 40),  # three primes: 7 bytes + 4 bits, then 5 bytes
])
def test_packing_is_lossless_and_each_coefficient_takes_its_prime_bits(params) -> None:
    ctx = new_secret_context(params)
    x, vec = _vector(ctx, 1)
    widths = wire_widths(ctx)
    packed = wire.serialize_vector(vec, widths)
    loaded = wire.load_vector(ctx.context, packed, widths)
    # same ciphertext: the same decryption bit for bit, and packing it again gives the
    # same bytes (TenSEAL's own serialisation differs run to run only by zstd framing)
    assert np.array_equal(np.array(loaded.decrypt()), np.array(vec.decrypt()))
    assert wire.serialize_vector(loaded, widths) == packed
    assert np.max(np.abs(np.array(loaded.decrypt()) - x)) < 1e-4
    coefficient_bytes = 2 * params.poly_modulus_degree * sum(widths) / 8
    assert coefficient_bytes < len(packed) < coefficient_bytes + 300
    assert len(packed) < len(vec.serialize())


def test_default_update_is_under_19_1_bytes_per_value(secret) -> None:
    length = 20 * secret.params.slots - 1
    w = np.random.default_rng(2).normal(0, 0.05, length).astype(np.float32)
    upd = encrypt_update(secret, w, 100)
    assert len(upd.to_bytes()) / length < 19.1  # 19 B of coefficients + headers


def test_sums_are_repacked_and_decrypt(secret) -> None:
    public = secret.public()
    widths = wire_widths(secret)
    x, vec = _vector(secret, 3)
    y, vec2 = _vector(secret, 4)
    acc = wire.load_vector(public.context, wire.serialize_vector(vec, widths), widths)
    acc += wire.load_vector(public.context, wire.serialize_vector(vec2, widths), widths)
    total = load_ciphertext(secret, wire.serialize_vector(acc, widths), secret.params.slots, 0)
    assert np.max(np.abs(np.array(total.decrypt()) - (x + y))) < 1e-4


def _set_coefficient_bits(packed: bytes, widths: tuple[int, ...]) -> bytes:
    """Every bit of the first coefficient set: 2^38 - 1 is above the 38-bit prime."""
    count = 2 * 4096
    start = len(packed) - count * widths[0] // 8  # the coefficients end the packed form
    out = bytearray(packed)
    out[start : start + 4] = b"\xff\xff\xff\xff"  # its low 32 bits (the u32 plane) ...
    for k in range(6):  # ... and bit 0 of each of the 6 bit planes after it
        out[start + 4 * count + k * count // 8] |= 0x01
    return bytes(out)


@pytest.mark.parametrize("mutate", [
    lambda p, w: p[:-1],
    lambda p, w: p + b"\x00",
    lambda p, w: b"XX" + p[2:],
    lambda p, w: p[:2] + b"\x09" + p[3:],  # packing version
    lambda p, w: p[:4] + bytes([40]) + p[5:],  # another width than the federation's
    lambda p, w: p[:40],
    _set_coefficient_bits,  # SEAL's own check: a coefficient not below its prime
])
def test_corrupt_packing_is_malformed(secret, mutate) -> None:
    widths = wire_widths(secret)
    _, vec = _vector(secret, 5)
    bad = mutate(wire.serialize_vector(vec, widths), widths)
    with pytest.raises(FederationError) as exc:
        load_ciphertext(secret, bad, secret.params.slots, 0)
    assert exc.value.reason == "malformed"


def test_an_update_of_the_unpacked_format_gets_a_clear_refusal(secret) -> None:
    """What a box of the previous release sends: version 1, TenSEAL's bytes as they are."""
    new = encrypt_update(secret, np.zeros(10, np.float32), 1).to_bytes()
    assert new[:4] == UPDATE_MAGIC
    old = bytearray(new[:44])  # the header: magic, version, key id, length, ...
    struct.pack_into(">H", old, 4, 1)
    raw = ts.ckks_vector(secret.context, [0.0] * 10 + [1 / 64]).serialize()
    old_blob = bytes(old) + struct.pack(">I", len(raw)) + raw
    with pytest.raises(FederationError) as exc:
        EncryptedUpdate.from_bytes(old_blob, secret)
    assert exc.value.reason == "malformed"
    assert "version 1" in exc.value.message and "version 2" in exc.value.message
