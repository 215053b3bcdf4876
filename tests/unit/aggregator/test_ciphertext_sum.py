"""The aggregator's numpy sum of ciphertexts (aggregator.rounds.ciphertext_sum) against
TenSEAL's own add and the box's decryption, and what it refuses (real CKKS throughout)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts

from aggregator.rounds.accumulator import CkksAccumulatorFactory
from federation.crypto import wire
from federation.crypto.ckks import CkksParams, FederationContext, data_primes, new_secret_context
from federation.crypto.packing import (
    EncryptedUpdate,
    decrypt_sums,
    encrypt_update,
    load_ciphertext,
    wire_widths,
)

LENGTH = 3000  # two ciphertexts at 2048 slots: a full one and a partial one


@pytest.fixture(scope="module")
def secret() -> FederationContext:
    return new_secret_context()


def _updates(secret: FederationContext, count: int) -> tuple[list[np.ndarray], list[bytes]]:
    rng = np.random.default_rng(7)
    ws = [rng.normal(0, 0.05, LENGTH).astype(np.float32) for _ in range(count)]
    return ws, [encrypt_update(secret, w, 40 + i, 64.0).to_bytes() for i, w in enumerate(ws)]


def _tenseal_sum(public: FederationContext, blobs: list[bytes]) -> list[ts.CKKSVector]:
    updates = [EncryptedUpdate.from_bytes(b, public) for b in blobs]
    sizes = [min(public.params.slots, LENGTH + 1 - i * public.params.slots)
             for i in range(len(updates[0].ciphertexts))]
    total = [load_ciphertext(public, ct, size, i)
             for i, (ct, size) in enumerate(zip(updates[0].ciphertexts, sizes, strict=True))]
    for update in updates[1:]:
        for i, (acc, ct) in enumerate(zip(total, update.ciphertexts, strict=True)):
            acc += load_ciphertext(public, ct, sizes[i], i)
    return total


@pytest.mark.parametrize("params", [
    CkksParams(),  # the default: one 38-bit data prime
    CkksParams(8192, (60, 40, 40, 60), 40),  # three primes, one of 60 bits: mod-p per prime
])
def test_the_sum_is_tenseals_add_coefficient_for_coefficient_and_decrypts(params) -> None:
    secret = new_secret_context(params)
    public = secret.public()
    ws, blobs = _updates(secret, 5)
    acc = CkksAccumulatorFactory(public).new()
    assert acc.stage_many(blobs[:3]) == [None] * 3
    acc.commit_staged()
    assert acc.stage_many(blobs[3:]) == [None] * 2
    acc.commit_staged()
    published = EncryptedUpdate.from_bytes(acc.to_bytes(), secret)
    assert published.n_updates == 5
    widths = wire_widths(public)
    for ours, theirs in zip(published.ciphertexts, _tenseal_sum(public, blobs), strict=True):
        expected = wire.parse_coefficients(wire.serialize_vector(theirs, widths), widths)
        assert np.array_equal(wire.parse_coefficients(ours, widths).coeffs, expected.coeffs)
    sums, count = decrypt_sums(secret, published)  # loaded through TenSEAL, as a box does
    c = 1 / 64.0
    expected_sum = sum(c * (40 + i) * w.astype(np.float64) for i, w in enumerate(ws))
    assert count == pytest.approx(c * sum(40 + i for i in range(5)), abs=1e-4)
    assert np.max(np.abs(sums - expected_sum)) < 1e-3


def _with_coefficient(secret: FederationContext, blob: bytes, value: int) -> bytes:
    """The update with its first coefficient set to ``value`` (repacked, header intact)."""
    widths = wire_widths(secret)
    update = EncryptedUpdate.from_bytes(blob, secret)
    ct = wire.parse_coefficients(update.ciphertexts[0], widths)
    coeffs = ct.coeffs.copy()
    coeffs[0, 0, 0] = value
    first = wire.pack_coefficients(ct.header, coeffs, widths)
    return dataclasses.replace(update, ciphertexts=(first, *update.ciphertexts[1:])).to_bytes()


@pytest.mark.parametrize("seen_before", [False, True])
def test_a_coefficient_not_below_its_prime_is_refused_and_the_sum_is_untouched(
        secret, seen_before) -> None:
    """SEAL's load refuses it the first time a metadata is seen; later, numpy does."""
    public = secret.public()
    (prime,) = data_primes(public)
    _, blobs = _updates(secret, 2)
    acc = CkksAccumulatorFactory(public).new()
    if seen_before:
        assert acc.stage_many([blobs[0]]) == [None]
        acc.commit_staged()
    before = acc.to_bytes() if seen_before else None
    (rejected,) = acc.stage_many([_with_coefficient(secret, blobs[1], prime)])
    assert rejected is not None and rejected.reason == "malformed"
    assert "ciphertext 0" in rejected.detail
    acc.discard_staged()
    if seen_before:
        assert acc.to_bytes() == before
    # the largest value below the prime is a valid residue: accepted
    assert acc.stage_many([_with_coefficient(secret, blobs[1], prime - 1)]) == [None]


def test_metadata_seal_would_refuse_is_refused_even_after_valid_updates(secret) -> None:
    """A ciphertext header differing from the validated ones goes through SEAL again."""
    public = secret.public()
    widths = wire_widths(public)
    _, blobs = _updates(secret, 2)
    acc = CkksAccumulatorFactory(public).new()
    assert acc.stage_many([blobs[0]]) == [None]
    update = EncryptedUpdate.from_bytes(blobs[1], secret)
    ct = wire.parse_coefficients(update.ciphertexts[0], widths)
    header = bytearray(ct.header)
    header[header.index(b"\x5e\xa1") + 2] ^= 0xFF  # SEAL header size field of the outer header
    bad = wire.pack_coefficients(bytes(header), ct.coeffs, widths)
    (rejected,) = acc.stage_many([
        dataclasses.replace(update, ciphertexts=(bad, *update.ciphertexts[1:])).to_bytes()])
    assert rejected is not None and rejected.reason == "malformed"


def test_a_sum_restored_from_its_bytes_carries_on(secret) -> None:
    public = secret.public()
    _, blobs = _updates(secret, 3)
    factory = CkksAccumulatorFactory(public)
    first = factory.new()
    assert first.stage_many(blobs[:2]) == [None, None]
    first.commit_staged()
    restored = factory.restore(first.to_bytes(), 2)
    assert restored.stage_many(blobs[2:]) == [None]
    restored.commit_staged()
    whole = factory.new()
    assert whole.stage_many(blobs) == [None] * 3
    whole.commit_staged()
    widths = wire_widths(public)
    for a, b in zip(EncryptedUpdate.from_bytes(restored.to_bytes(), public).ciphertexts,
                    EncryptedUpdate.from_bytes(whole.to_bytes(), public).ciphertexts,
                    strict=True):
        assert np.array_equal(wire.parse_coefficients(a, widths).coeffs,
                              wire.parse_coefficients(b, widths).coeffs)
    with pytest.raises(ValueError, match="updates"):
        factory.restore(first.to_bytes(), 3)
