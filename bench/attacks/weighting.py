"""Issue 15, attack 1: the weighting attack, with the federation's bounds off and on.

``python -m bench.attacks.weighting [--quick]``. A registered box holding the
federation's secret context sends n = 16,384 through the product's own
``encrypt_update`` while the honest boxes have about 50 samples each. Real CKKS
ciphertexts, summed as the aggregator sums them (``StreamingSum``), decrypted and checked
by the box's own check (``decrypt_within_bounds``, what ``edge.federated.result_apply``
runs before its canary). In the same run: the bounds off (the policy knob ``serve
--max-samples 0``), then on. The attacker's share of the average is measured from the
decrypted average (least squares on the attacker's direction); the defence holds when,
with the bounds on, every over-cap or unclipped sum is refused and the most the attacker
can take within the policy is the cap's share, cap / (cap + the honest boxes' n).
"""

from __future__ import annotations

import argparse

import numpy as np

from federation.crypto.bounds import Bounds, ResultPolicy, clip_update
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.packing import (
    EncryptedUpdate,
    StreamingSum,
    decrypt_within_bounds,
    encrypt_update,
    plain_weighted_average,
)
from federation.errors import FederationError

SCALE = 64.0  # the federation's default count_scale
ATTACK_N = 16_384  # the largest n encrypt_update takes for |w| < 1 at count_scale 64
ISSUE_SHARE = 0.991


def _sum(ctx: FederationContext, length: int, updates: list[EncryptedUpdate]
         ) -> EncryptedUpdate:
    total = StreamingSum(ctx.public(), length)  # the aggregator's context: public only
    for u in updates:
        total.add(u.to_bytes())
    return total.result()


def _share(average: np.ndarray, honest: np.ndarray, attacker: np.ndarray) -> float:
    d = attacker.astype(np.float64) - honest
    return float(np.dot(average - honest, d) / np.dot(d, d))


def _refusal(job: object) -> str | None:
    try:
        job()  # type: ignore[operator]
    except FederationError as exc:
        return exc.reason
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attacks.weighting",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: 3 honest boxes")
    ap.add_argument("--honest", type=int, default=8, help="honest boxes (default 8)")
    ap.add_argument("--length", type=int, default=5_376,
                    help="values per update (default: the embed_bn part's 5,376)")
    ap.add_argument("--cap", type=int, default=100, help="max samples per update")
    ap.add_argument("--clip", type=float, default=0.5, help="L2 clip of an update's change")
    args = ap.parse_args(argv)
    honest_boxes = 3 if args.quick else args.honest
    rng = np.random.default_rng(15)
    ctx = new_secret_context()
    base = np.clip(rng.normal(0, 0.3, args.length), -0.9, 0.9).astype(np.float32)
    ns = [int(n) for n in rng.integers(40, 61, honest_boxes)]
    honest = [clip_update(base + rng.normal(0, 0.01, args.length).astype(np.float32), base,
                          args.clip)[0] for _ in ns]
    honest_avg = plain_weighted_average(honest, ns)
    attacker = clip_update(base + np.float32(0.05), base, args.clip)[0]  # its own direction
    bounds = Bounds(args.cap, args.clip)
    policy = ResultPolicy(SCALE, bounds)
    sealed = [encrypt_update(ctx, w, n, SCALE, bounds=bounds, base=base)
              for w, n in zip(honest, ns, strict=True)]
    print(f"weighting attack (issue 15, attack 1): {honest_boxes} honest boxes (n {min(ns)}-"
          f"{max(ns)}, {sum(ns)} in all), attacker n = {ATTACK_N:,}, {args.length:,} values, "
          "real CKKS (encrypt_update, StreamingSum, the box's decrypt_within_bounds)")

    off = decrypt_within_bounds(ctx, _sum(ctx, args.length, [
        *sealed, encrypt_update(ctx, attacker, ATTACK_N, SCALE)]), None, base)
    before = _share(off, honest_avg, attacker)
    print(f"  bounds off (serve --max-samples 0): attacker's share of the average "
          f"{before:.1%} (issue 15: {ISSUE_SHARE:.1%}); no bound to refuse it")

    print(f"  bounds on (cap {args.cap}, clip {args.clip:g} L2):")
    honest_ok = _refusal(lambda: decrypt_within_bounds(
        ctx, _sum(ctx, args.length, sealed), policy, base))
    print(f"    honest round alone: {'passes' if honest_ok is None else honest_ok} "
          "every box's check")
    at_encrypt = _refusal(lambda: encrypt_update(ctx, attacker, ATTACK_N, SCALE,
                                                 bounds=bounds, base=base))
    print(f"    n = {ATTACK_N:,} through encrypt_update: refused ({at_encrypt})")
    hostile = _refusal(lambda: decrypt_within_bounds(ctx, _sum(ctx, args.length, [
        *sealed, encrypt_update(ctx, attacker, ATTACK_N, SCALE)]), policy, base))
    print(f"    n = {ATTACK_N:,} skipping the check: every box refuses the result ({hostile})")
    big = base + np.float32(0.2)
    unclipped = _refusal(lambda: decrypt_within_bounds(ctx, _sum(ctx, args.length, [
        *sealed, encrypt_update(ctx, big, args.cap, SCALE)]), policy, base))
    print(f"    unclipped change (L2 {np.linalg.norm(big - base):.1f} vs clip {args.clip:g}): "
          f"every box refuses the result ({unclipped})")
    capped = decrypt_within_bounds(ctx, _sum(ctx, args.length, [
        *sealed, encrypt_update(ctx, attacker, args.cap, SCALE, bounds=bounds, base=base)]),
        policy, base)
    after = _share(capped, honest_avg, attacker)
    bound = args.cap / (args.cap + sum(ns))
    held = (honest_ok is None and at_encrypt == "count_over_cap"
            and hostile == "count_over_cap" and unclipped == "change_over_clip"
            and after <= bound + 1e-3)
    print(f"    the most within the policy (n = cap): share {after:.1%} <= cap share "
          f"{args.cap}/({args.cap}+{sum(ns)}) = {bound:.1%}")
    print(f"  attacker's share: before {before:.1%}, now at most {after:.1%}: "
          f"{'HELD' if held else 'NOT HELD'}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
