"""CKKS packing on real ciphertexts: encrypted FedAvg equals the plaintext oracle."""

from __future__ import annotations

import numpy as np
import pytest

from federation.crypto import wire
from federation.crypto.ckks import (
    CkksParams,
    load_context,
    new_secret_context,
    public_context_bytes,
    require_public_only,
    secret_context_bytes,
)
from federation.crypto.packing import (
    EncryptedUpdate,
    StreamingSum,
    decrypt_average,
    decrypt_sums,
    encrypt_update,
    n_ciphertexts,
    plain_weighted_average,
    wire_widths,
)
from federation.errors import FederationError

LENGTH = 30_000


@pytest.fixture(scope="module")
def secret():
    return new_secret_context()


@pytest.fixture(scope="module")
def public(secret):
    return load_context(public_context_bytes(secret))


def realistic_update(seed: int, length: int = LENGTH) -> np.ndarray:
    """Conv weights ~N(0, 0.05), BN gammas ~1 and betas, a few large values up to 10."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, length)
    w[-512:-256] = rng.normal(1.0, 0.1, 256)
    w[-256:] = rng.normal(0.0, 0.3, 256)
    w[rng.integers(0, length, 20)] = rng.uniform(-10, 10, 20)
    return w.astype(np.float32)


def test_encrypted_fedavg_matches_plain_weighted_average(secret, public) -> None:
    vectors = [realistic_update(s) for s in range(4)]
    counts = [312, 97, 450, 1200]
    total = StreamingSum(public, LENGTH)
    for w, n in zip(vectors, counts, strict=True):
        upd = encrypt_update(secret, w, n)
        assert len(upd.ciphertexts) == n_ciphertexts(LENGTH, secret.params.slots)
        total.add(upd.to_bytes())  # as the aggregator receives it
    assert total.count == 4
    wire = total.result().to_bytes()
    avg = decrypt_average(secret, EncryptedUpdate.from_bytes(wire, secret))
    oracle = plain_weighted_average(vectors, counts)
    assert avg.dtype == np.float32 and avg.shape == (LENGTH,)
    assert np.max(np.abs(avg - oracle)) < 1e-5
    _weighted, count = decrypt_sums(secret, EncryptedUpdate.from_bytes(wire))
    assert count * 64 == pytest.approx(sum(counts), rel=1e-6)


def test_wire_size_per_value(secret) -> None:
    upd = encrypt_update(secret, realistic_update(9, 20_479), 100)
    assert len(upd.ciphertexts) == 10  # count rides in the last slot, no extra ciphertext
    assert len(upd.to_bytes()) / 20_479 <= 24.0


def test_public_context_cannot_decrypt_and_secret_is_refused(secret, public) -> None:
    assert not public.is_private and secret.is_private
    require_public_only(public)
    with pytest.raises(FederationError) as exc:
        require_public_only(secret)
    assert exc.value.reason == "secret_key_refused"
    upd = encrypt_update(secret, realistic_update(1, 1000), 10)
    with pytest.raises(FederationError) as exc:
        decrypt_average(public, upd)
    assert exc.value.reason == "public_key_cannot_decrypt"
    # Below our guard, TenSEAL itself refuses: the key material is really absent.
    import tenseal as ts

    vec = ts.ckks_vector_from(public.context, wire.unpack(upd.ciphertexts[0], wire_widths(public)))
    with pytest.raises(ValueError):
        vec.decrypt()
    assert len(public_context_bytes(secret)) < len(secret_context_bytes(secret)) / 10


def test_aggregator_cannot_encrypt_with_symmetric_public_context(public) -> None:
    with pytest.raises(FederationError) as exc:
        encrypt_update(public, np.ones(10, np.float32), 1)
    assert exc.value.reason == "cannot_encrypt"


def test_other_federation_key_is_detected(secret, public) -> None:
    stranger = new_secret_context()
    upd = encrypt_update(stranger, realistic_update(2, 1000), 50)
    with pytest.raises(FederationError) as exc:
        StreamingSum(public, 1000).add(upd)
    assert exc.value.reason == "wrong_key"
    with pytest.raises(FederationError) as exc:
        decrypt_average(secret, upd)
    assert exc.value.reason == "wrong_key"


def test_bad_update_leaves_running_sum_intact(secret, public) -> None:
    a, b = realistic_update(3, 5000), realistic_update(4, 5000)
    s = StreamingSum(public, 5000)
    s.add(encrypt_update(secret, a, 100))
    good = encrypt_update(secret, b, 300)
    corrupt = EncryptedUpdate(
        key_id=good.key_id, length=good.length, slots=good.slots,
        ciphertexts=(*good.ciphertexts[:-1], good.ciphertexts[-1][:200]),
    )
    with pytest.raises(FederationError) as exc:
        s.add(corrupt)
    assert exc.value.reason == "malformed"
    with pytest.raises(FederationError):
        s.add(encrypt_update(secret, realistic_update(5, 4000), 10))  # wrong length
    s.add(good)
    avg = decrypt_average(secret, s.result())
    # CKKS noise is fresh randomness: over 5,000 values at 400 samples in all the max error
    # was 2.4e-6 median, 9.1e-6 max in 40 runs, and 1.28e-5 once in a CI run; a corrupted
    # sum would be off by far more than this bound
    assert np.max(np.abs(avg - plain_weighted_average([a, b], [100, 300]))) < 5e-5
    resumed = StreamingSum.resume(public, EncryptedUpdate.from_bytes(s.result().to_bytes()))
    assert resumed.count == 2


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:10],
        lambda d: b"XXXX" + d[4:],
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: d[:4] + b"\x00\x01" + d[6:],  # version 1: an older box's update
        lambda d: d[:24] + (10**6).to_bytes(8, "big") + d[32:],  # length vs count
        lambda d: d[:44] + (2**31).to_bytes(4, "big") + d[48:],  # ciphertext length
    ],
)
def test_malformed_update_bytes(secret, mutate) -> None:
    data = encrypt_update(secret, realistic_update(6, 3000), 20).to_bytes()
    with pytest.raises(FederationError) as exc:
        EncryptedUpdate.from_bytes(mutate(data), secret)
    assert exc.value.reason == "malformed"


def test_out_of_range_update_is_refused(secret) -> None:
    with pytest.raises(FederationError) as exc:
        encrypt_update(secret, np.full(10, 10.0, np.float32), 2000)
    assert exc.value.reason == "out_of_range"
    for bad in (np.array([np.nan], np.float32), np.zeros((2, 2), np.float32)):
        with pytest.raises(ValueError):
            encrypt_update(secret, bad, 1)
    with pytest.raises(ValueError):
        encrypt_update(secret, np.ones(3, np.float32), 0)


def test_no_native_output_reaches_stdout(secret, public, capfd) -> None:
    s = StreamingSum(public, 10_000)
    for seed in range(2):
        s.add(encrypt_update(secret, realistic_update(seed, 10_000), 10))
    decrypt_average(secret, s.result())
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_params_validation_and_container_round_trip(secret) -> None:
    with pytest.raises(ValueError):
        CkksParams(poly_modulus_degree=3000)
    with pytest.raises(ValueError):
        CkksParams(coeff_mod_bit_sizes=(30, 40), global_scale_bits=30)
    again = load_context(secret_context_bytes(secret))
    assert again.key_id == secret.key_id and again.params == secret.params and again.is_private
    for bad in (b"", b"FFK1", b"FFK1\x00\x00\x00\x02{}", secret_context_bytes(secret)[:200]):
        with pytest.raises(FederationError):
            load_context(bad)
