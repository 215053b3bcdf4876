"""Adding CKKS ciphertexts as numbers, without deserialising them into TenSEAL.

Updates arrive bit-packed (``federation.crypto.wire``): every coefficient of a ciphertext
is a residue modulo one of the federation's data primes. Adding two ciphertexts at the
same level and scale is, in SEAL (``Evaluator::add_inplace``), adding their coefficients
modulo each prime; nothing else. This module does exactly that with numpy on the
unpacked coefficients, and packs the sum back into the same wire form, which boxes load
through TenSEAL as before. No encryption and no key is involved: the aggregator holds a
public-only context and adds what it is given (tests/unit/aggregator/test_ciphertext_sum.py
checks the sum against TenSEAL's own add and the box's decryption).

What SEAL checks when it loads a ciphertext is checked here too, so that nothing enters
the sum that SEAL would refuse (and the published sum always loads at the boxes):

- the metadata (TenSEAL's vector size and scale, SEAL's version bytes, level, NTT form,
  polynomial count, degree, scale, correction factor, array header): the first time a
  given metadata is seen (once per round in practice), the ciphertext goes through
  TenSEAL's load, i.e. SEAL's full validation; later ciphertexts with byte-identical
  metadata are known to pass it;
- every coefficient below its prime, in numpy, for every ciphertext;
- the federation's own rules (fresh: 2 polynomials, the federation scale, the first data
  level), as ``accumulator`` did before on the TenSEAL objects.

Measured by ``python -m bench.aggregator.intake --steps`` (each step of one update) and
against main by running that bench from both checkouts in turn (README's bench table).
"""

from __future__ import annotations

import numpy as np

from federation.crypto import wire
from federation.crypto.ckks import FederationContext, data_primes
from federation.crypto.packing import load_ciphertext, wire_widths
from federation.errors import MALFORMED, FederationError

# Distinct metadata remembered as SEAL-validated; a sender varying it on purpose only
# buys itself TenSEAL loads (the cost of every update before this module), never memory.
_MAX_CHECKED_METADATA = 64


class CiphertextChecker:
    """Turns wire ciphertexts into validated coefficient arrays, for one federation context."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.widths = wire_widths(ctx)
        # shaped to broadcast against size x k x N coefficient arrays
        self._prime_list = np.array(data_primes(ctx), dtype=np.uint64)
        self.primes = self._prime_list[None, :, None]
        self._scale = float(ctx.context.global_scale)
        # the level of a fresh ciphertext, from the context: no update decides it
        self._parms = tuple(ctx.context.seal_context().data.first_parms_id())
        self._seal_checked: set[tuple[int, bytes]] = set()

    def load(self, data: bytes | memoryview, expected_size: int, i: int) -> wire.Coefficients:
        """Ciphertext ``i`` of an update, holding ``expected_size`` values; anything SEAL
        or the federation would refuse is ``FederationError(malformed)``."""
        try:
            ct = wire.parse_coefficients(data, self.widths)
        except FederationError as exc:
            raise FederationError(MALFORMED, f"ciphertext {i}: {exc.message}") from None
        key = (expected_size, ct.metadata)
        if key not in self._seal_checked:
            load_ciphertext(self.ctx, data, expected_size, i)  # SEAL's validation, once
            if len(self._seal_checked) >= _MAX_CHECKED_METADATA:
                self._seal_checked.clear()
            self._seal_checked.add(key)
        facts = ct.facts
        if facts.scale != self._scale or facts.size != 2:
            raise FederationError(
                MALFORMED, f"ciphertext {i}: scale 2^{np.log2(facts.scale):.1f} / size "
                f"{facts.size}, expected a fresh ciphertext at the federation scale")
        if facts.parms_id != self._parms:
            raise FederationError(MALFORMED, f"ciphertext {i} is at another level")
        # the largest residue per prime: one reduction, no temporary array of booleans
        if np.any(ct.coeffs.max(axis=(0, 2)) >= self._prime_list):
            raise FederationError(
                MALFORMED, f"ciphertext {i}: a coefficient is not below its prime")
        return ct

    def add_into(self, total: wire.Coefficients, other: wire.Coefficients) -> None:
        """``total += other`` modulo each prime (SEAL's add_poly_coeffmod). Both are below
        their primes (< 2^60), so the sum fits a uint64; subtracting the prime wraps
        around to a huge value exactly when the sum is already below it."""
        out = total.coeffs
        np.add(out, other.coeffs, out=out)
        np.minimum(out, out - self.primes, out=out)

    def pack(self, total: wire.Coefficients) -> bytes:
        """The wire form of a sum (behind the header of the first ciphertext added)."""
        return wire.pack_coefficients(total.header, total.coeffs, self.widths)
