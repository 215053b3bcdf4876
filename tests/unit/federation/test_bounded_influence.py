"""Issue 15, attack 1: bounded influence under encryption, on real CKKS ciphertexts.

Boxes encrypt with the product's ``encrypt_update``; the aggregator's ``StreamingSum``
adds; the box's check (``decrypt_within_bounds``) runs on the decrypted sums. The
weighting attack (n = 16,384 against honest boxes of 50) takes ~99% of the average
without bounds; with a cap its share is at most cap / (cap + the honest boxes' n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

from federation.crypto import wire
from federation.crypto.bounds import (
    CHANGE_OVER_CLIP,
    COUNT_OVER_CAP,
    COUNT_UNDER_FLOOR,
    Bounds,
    ResultPolicy,
    clip_update,
)
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.dp import DpConfig, privatize
from federation.crypto.packing import (
    EncryptedUpdate,
    StreamingSum,
    decrypt_within_bounds,
    encrypt_update,
    plain_weighted_average,
    wire_widths,
)
from federation.errors import MALFORMED, FederationError
from federation.messages import ModelPointer, RoundAnnounce

LENGTH = 5_376  # the embed_bn part's size
SCALE = 64.0
HONEST_N = (50, 45, 55)
CAP = 100
CLIP = 0.5


@pytest.fixture(scope="module")
def ctx() -> FederationContext:
    return new_secret_context()


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    # |w| < 1: n = 16,384 is then the largest n encrypt_update takes (count_scale 64)
    return np.clip(np.random.default_rng(0).normal(0, 0.3, LENGTH), -0.9, 0.9).astype(
        np.float32)


def honest_updates(base: np.ndarray, clip: float | None = CLIP) -> list[np.ndarray]:
    """Fine-tuning steps of a few tenths in L2, clipped as an honest box clips them."""
    rng = np.random.default_rng(1)
    out = []
    for _ in HONEST_N:
        local = base + rng.normal(0, 0.01, LENGTH).astype(np.float32)
        out.append(local if clip is None else clip_update(local, base, clip)[0])
    return out


def summed(ctx: FederationContext, updates: list[EncryptedUpdate]) -> EncryptedUpdate:
    s = StreamingSum(ctx, LENGTH)
    for u in updates:
        s.add(EncryptedUpdate.from_bytes(u.to_bytes(), ctx))  # as the wire carries them
    return s.result()


def attacker_share(average: np.ndarray, honest_avg: np.ndarray, attacker: np.ndarray) -> float:
    """s in average = s * attacker + (1 - s) * honest average (least squares)."""
    d = attacker.astype(np.float64) - honest_avg
    return float(np.dot(average - honest_avg, d) / np.dot(d, d))


def policy(bounds: Bounds, dp: DpConfig | None = None, quorum: int = 1) -> ResultPolicy:
    return ResultPolicy(SCALE, bounds, dp, quorum)


def test_an_honest_round_passes_the_bounds_and_is_the_weighted_average(ctx, base) -> None:
    ws = honest_updates(base)
    bounds = Bounds(CAP, CLIP)
    enc = [encrypt_update(ctx, w, n, SCALE, bounds=bounds, base=base)
           for w, n in zip(ws, HONEST_N, strict=True)]
    avg = decrypt_within_bounds(ctx, summed(ctx, enc), policy(bounds), base)
    np.testing.assert_allclose(avg, plain_weighted_average(ws, HONEST_N), atol=1e-4)


def test_the_weighting_attack_gets_at_most_the_caps_share(ctx, base) -> None:
    ws = honest_updates(base)
    honest_avg = plain_weighted_average(ws, HONEST_N)
    attacker = clip_update(base + np.float32(0.05), base, CLIP)[0]  # its own direction
    bounds = Bounds(CAP, CLIP)
    honest = [encrypt_update(ctx, w, n, SCALE, bounds=bounds, base=base)
              for w, n in zip(ws, HONEST_N, strict=True)]

    # without bounds (the policy off): the product's own encrypt_update takes n = 16,384
    unbounded = decrypt_within_bounds(
        ctx, summed(ctx, [*honest, encrypt_update(ctx, attacker, 16_384, SCALE)]), None, base)
    before = attacker_share(unbounded, honest_avg, attacker)
    assert before > 0.99  # issue 15: 99.1%

    # an honest box's encrypt_update refuses n over the cap ...
    with pytest.raises(FederationError) as refused:
        encrypt_update(ctx, attacker, 16_384, SCALE, bounds=bounds, base=base)
    assert refused.value.reason == COUNT_OVER_CAP
    # ... and a hostile one that skips the check is caught by every box's check
    with pytest.raises(FederationError) as caught:
        decrypt_within_bounds(ctx, summed(ctx, [*honest, encrypt_update(
            ctx, attacker, 16_384, SCALE)]), policy(bounds), base)
    assert caught.value.reason == COUNT_OVER_CAP
    # the most it can do within the policy: n = cap
    capped = decrypt_within_bounds(ctx, summed(ctx, [*honest, encrypt_update(
        ctx, attacker, CAP, SCALE, bounds=bounds, base=base)]), policy(bounds), base)
    after = attacker_share(capped, honest_avg, attacker)
    cap_share = CAP / (CAP + sum(HONEST_N))
    assert after <= cap_share + 1e-3
    assert after == pytest.approx(cap_share, abs=1e-3)  # the share the policy promises


def test_one_sample_over_the_cap_is_refused(ctx, base) -> None:
    ws = honest_updates(base)
    over = [encrypt_update(ctx, w, n, SCALE) for w, n in zip(ws, (CAP, CAP, CAP + 1),
                                                               strict=True)]
    with pytest.raises(FederationError) as refused:
        decrypt_within_bounds(ctx, summed(ctx, over), policy(Bounds(CAP)), base)
    assert refused.value.reason == COUNT_OVER_CAP
    at_cap = [encrypt_update(ctx, w, CAP, SCALE) for w in ws]
    decrypt_within_bounds(ctx, summed(ctx, at_cap), policy(Bounds(CAP)), base)


def test_an_unclipped_update_is_refused_by_the_box_and_by_encrypt_update(ctx, base) -> None:
    ws = honest_updates(base)
    bounds = Bounds(CAP, CLIP)
    big = base + np.float32(0.2)  # L2 change 0.2 * sqrt(5376) = 14.7, clip 0.5
    with pytest.raises(FederationError) as refused:
        encrypt_update(ctx, big, 50, SCALE, bounds=bounds, base=base)
    assert refused.value.reason == CHANGE_OVER_CLIP
    enc = [*(encrypt_update(ctx, w, n, SCALE) for w, n in zip(ws, HONEST_N, strict=True)),
           encrypt_update(ctx, big, 50, SCALE)]
    with pytest.raises(FederationError) as caught:
        decrypt_within_bounds(ctx, summed(ctx, enc), policy(bounds), base)
    assert caught.value.reason == CHANGE_OVER_CLIP
    # a box that does not hold the round's base (it joins late) checks the count only
    late = decrypt_within_bounds(ctx, summed(ctx, enc), policy(bounds), None)
    assert float(np.linalg.norm(late - base)) > CLIP


def _forged(ctx: FederationContext, weights: np.ndarray, count_slot: float) -> EncryptedUpdate:
    """A hostile box's own encryption: weighted slots and count slot chosen apart."""
    flat = np.append(weights.astype(np.float64), count_slot)
    slots = ctx.params.slots
    cts = tuple(wire.serialize_vector(ts.ckks_vector(ctx.context, flat[i:i + slots].tolist()),
                                      wire_widths(ctx)) for i in range(0, flat.size, slots))
    return EncryptedUpdate(ctx.key_id, LENGTH, slots, cts)


def test_a_forged_count_slot_is_refused(ctx, base) -> None:
    """The weighted slots of c*n*w with the count slot near zero: the division by the
    smaller count multiplies the average; the floor (one sample per update) catches it."""
    ws = honest_updates(base)
    honest = [encrypt_update(ctx, w, n, SCALE) for w, n in zip(ws, HONEST_N, strict=True)]
    forged = _forged(ctx, base * (50 / SCALE), -sum(HONEST_N) / SCALE + 1e-2)
    with pytest.raises(FederationError) as caught:
        decrypt_within_bounds(ctx, summed(ctx, [*honest, forged]), policy(Bounds(CAP)), base)
    assert caught.value.reason == COUNT_UNDER_FLOOR


def test_honest_dp_rounds_pass_the_clip_check(ctx, base) -> None:
    """DP noise is added after the clip: the allowance covers it, the clip still binds."""
    dp = DpConfig(clip_norm=1.0, noise_multiplier=1.0, mode="distributed")
    bounds = Bounds(CAP, CLIP)
    applied = bounds.dp_within(dp)
    assert applied.clip_norm == CLIP
    n_equal = bounds.capped(round(SCALE))
    rng = np.random.default_rng(2)
    ws = [privatize(w, base, applied, quorum=3, rng=rng)[0] for w in honest_updates(base, None)]
    enc = [encrypt_update(ctx, w, n_equal, SCALE) for w in ws]
    pol = policy(bounds, dp, quorum=3)
    avg = decrypt_within_bounds(ctx, summed(ctx, enc), pol, base)
    np.testing.assert_allclose(avg, np.mean(ws, axis=0), atol=1e-4)
    # the noise's norm (~0.14 x sqrt(5376) = 10.6 here) loosens the bound: DP rounds
    # catch only gross updates; 200x the clip is one
    with pytest.raises(FederationError) as caught:
        decrypt_within_bounds(ctx, summed(ctx, [*enc, encrypt_update(
            ctx, base + np.float32(200 * CLIP / math.sqrt(LENGTH)), n_equal, SCALE)]),
            pol, base)
    assert caught.value.reason == CHANGE_OVER_CLIP


def test_bounds_travel_in_the_announce_and_the_pointer() -> None:
    bounds = Bounds(CAP, CLIP)
    ann = RoundAnnounce(round=3, base_model="round-2", state="open", deadline=1.0, quorum=2,
                        count_scale=SCALE, chunk_size=16384, bounds=bounds)
    again = RoundAnnounce.from_json(ann.to_json())
    assert again.bounds == bounds
    assert again.result_policy() == ResultPolicy(SCALE, bounds, None, 2)
    pointer = ModelPointer(3, "round-3", "ab", "00", 10, 1, policy=again.result_policy())
    assert ModelPointer.from_json(pointer.to_json()).policy == pointer.policy
    # absent: an announce of an older aggregator, no bounds
    assert "bounds" not in RoundAnnounce.from_json(
        ann.to_json().replace(b'"bounds"', b'"other"')).to_dict()
    for bad in ({"max_samples": 0, "clip_norm": None}, {"max_samples": "5"},
                {"max_samples": 5, "clip_norm": -1.0}, {"max_samples": True}):
        body = {**ann.to_dict(), "bounds": bad}
        with pytest.raises(FederationError) as malformed:
            RoundAnnounce.from_dict(body)
        assert malformed.value.reason == MALFORMED
