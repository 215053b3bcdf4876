"""Encrypted FedAvg updates: pack, serialize, stream-sum, decrypt.

Each box ``i`` sends ONE flat CKKS-encrypted vector ``[c*n_i*w_i..., c*n_i]`` split into
ciphertexts of ``params.slots`` values (never longer: TenSEAL would fall back to a slow
path and print C++ warnings). The sample count rides in the slot after the weights, so
a 1M-value update needs ceil((1M+1)/2048) = 489 ciphertexts and no extra one for the
count. The aggregator only adds; boxes decrypt both sums and divide (``c`` cancels).

Scale budget (default params: scale 2^26, 38-bit data prime, so decrypted magnitudes
must stay below ``params.value_bound`` = 2^11 = 2048; count_scale 64, so c = 1/64):

- precision: fresh noise is up to ~2^11 in slot units over a 1M-value model, i.e.
  ~3e-5 absolute per decrypted slot of the weighted sum; the average divides that by
  c*sum(n) = sum(n)/64, so two boxes with 400 samples in all (c*sum(n) = 6.25) average
  to ~5e-6 max abs error, three boxes with a few hundred each to ~2e-6, and more
  samples only make it smaller (measured: ``python -m bench.federation.ckks_params``).
- range: sum_i c*n_i*max|w_i| must stay below 2048, i.e. sum_i n_i*max|w_i| < 131,072
  (e.g. 16 boxes x 800 samples x |w| <= 10, or 32 boxes x 4,000 samples x |w| <= 1).
  ``encrypt_update`` refuses one update that would take more than 1/headroom of it
  (default headroom 8: n*max|w| <= 16,384), so a round of 8 maximal updates still
  decodes; a wrapped sum decrypts to garbage, which the box's canary check rejects.
  Sending weight deltas against the round's base model instead of absolute weights
  shrinks max|w| and widens the envelope; a federation with bigger rounds raises
  count_scale (a federation-wide constant) at the cost of precision for small rounds.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from federation.crypto import wire
from federation.crypto.bounds import Bounds, ResultPolicy, check_change, check_sums, check_update
from federation.crypto.ckks import FederationContext, require_secret
from federation.errors import CANNOT_ENCRYPT, MALFORMED, OUT_OF_RANGE, WRONG_KEY, FederationError

log = logging.getLogger(__name__)

DEFAULT_COUNT_SCALE = 64.0
DEFAULT_HEADROOM = 8

UPDATE_MAGIC = b"FFU1"
# 2: ciphertexts bit-packed (federation.crypto.wire); 1 was TenSEAL's serialisation as is.
UPDATE_VERSION = 2
LEGACY_UPDATE_VERSION = 1  # refused on the wire; stored blobs are upgraded (aggregator.state)
# magic, version, reserved, key_id (16 raw bytes), length, slots, n_ciphertexts, n_updates
_HEADER = struct.Struct(">4sHH16sQIII")
HEADER_SIZE = _HEADER.size
_CT_LEN = struct.Struct(">I")
MAX_CIPHERTEXT_BYTES = 16 * 1024 * 1024
MAX_VECTOR_LENGTH = 1 << 31


def n_ciphertexts(length: int, slots: int) -> int:
    """Ciphertexts needed for ``length`` weights plus the count slot."""
    return math.ceil((length + 1) / slots)


@dataclass(frozen=True)
class EncryptedUpdate:
    """Serialized ciphertexts of ``[c*n*w..., c*n]`` (or a sum of such vectors).

    Kept as bytes, not TenSEAL objects: a deserialized ciphertext is several times
    larger than its compressed form, and the aggregator never needs more than one
    deserialized model (its running sum) at a time.
    """

    key_id: str
    length: int
    slots: int
    ciphertexts: tuple[bytes, ...]
    n_updates: int = 1

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(UPDATE_MAGIC, UPDATE_VERSION, 0, bytes.fromhex(self.key_id),
                              self.length, self.slots, len(self.ciphertexts), self.n_updates)
        parts = [header]
        for ct in self.ciphertexts:
            parts.append(_CT_LEN.pack(len(ct)))
            parts.append(ct)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, ctx: FederationContext | None = None) -> EncryptedUpdate:
        """Parse strictly; ``ctx`` (if given) must be of the same federation key."""
        layout = parse_layout(data)
        if ctx is not None:
            _check_same_key(ctx, layout.key_id, layout.slots)
        view = memoryview(data)
        cts = tuple(bytes(view[start:end]) for start, end in layout.spans)
        return cls(key_id=layout.key_id, length=layout.length, slots=layout.slots,
                   ciphertexts=cts, n_updates=layout.n_updates)

    @property
    def nbytes(self) -> int:
        return _HEADER.size + sum(_CT_LEN.size + len(ct) for ct in self.ciphertexts)


@dataclass(frozen=True)
class UpdateLayout:
    """Where an encrypted update's ciphertexts lie in its bytes, validated, uncopied."""

    key_id: str
    length: int
    slots: int
    n_updates: int
    spans: tuple[tuple[int, int], ...]


def claimed_updates(data: bytes) -> int:
    """Updates an encrypted blob says it sums, from its header (1 if it is not one)."""
    if len(data) < _HEADER.size or data[:4] != UPDATE_MAGIC:
        return 1
    return int(_HEADER.unpack_from(data, 0)[7])


def parse_layout(data: bytes) -> UpdateLayout:
    """Strictly validate an encrypted update's header and framing (no TenSEAL work)."""
    if len(data) < _HEADER.size:
        raise FederationError(MALFORMED, "encrypted update shorter than its header")
    magic, version, _reserved, key_raw, length, slots, count, n_updates = _HEADER.unpack_from(
        data, 0
    )
    if magic != UPDATE_MAGIC:
        raise FederationError(MALFORMED, "not an encrypted update (bad magic)")
    if version != UPDATE_VERSION:
        raise FederationError(
            MALFORMED, f"unsupported encrypted update version {version}: this side speaks "
            f"version {UPDATE_VERSION} (bit-packed ciphertexts); the box and the aggregator "
            "must run FedFace releases of the same update format")
    if not 0 < length <= MAX_VECTOR_LENGTH or slots <= 0 or slots & (slots - 1):
        raise FederationError(MALFORMED, f"bad vector length {length} or slots {slots}")
    if count != n_ciphertexts(length, slots):
        raise FederationError(
            MALFORMED, f"{count} ciphertexts for {length} values at {slots} slots"
        )
    if n_updates < 1:
        raise FederationError(MALFORMED, "encrypted update sums zero updates")
    spans: list[tuple[int, int]] = []
    offset = _HEADER.size
    for i in range(count):
        if offset + _CT_LEN.size > len(data):
            raise FederationError(MALFORMED, f"encrypted update truncated at ciphertext {i}")
        (ct_len,) = _CT_LEN.unpack_from(data, offset)
        offset += _CT_LEN.size
        if ct_len == 0 or ct_len > MAX_CIPHERTEXT_BYTES or offset + ct_len > len(data):
            raise FederationError(MALFORMED, f"ciphertext {i} length {ct_len} out of range")
        spans.append((offset, offset + ct_len))
        offset += ct_len
    if offset != len(data):
        raise FederationError(MALFORMED, f"{len(data) - offset} trailing bytes after update")
    return UpdateLayout(key_raw.hex(), length, slots, n_updates, tuple(spans))


def update_version(data: bytes) -> int | None:
    """The format version in encrypted-update bytes (None: not an encrypted update)."""
    if len(data) < 6 or data[:4] != UPDATE_MAGIC:
        return None
    return int.from_bytes(data[4:6], "big")


def upgrade_legacy_update(data: bytes, widths: tuple[int, ...]) -> bytes:
    """A version-1 encrypted update (each ciphertext as TenSEAL serialised it, what
    releases before bit-packing sent and stored) in the current format. Lossless: the
    same ciphertexts, their coefficients bit-packed (``wire.pack``, which reads SEAL's
    zstd-compressed bytes); ``widths`` are the federation's (``wire_widths``)."""
    if update_version(data) != LEGACY_UPDATE_VERSION:
        raise FederationError(MALFORMED, "not a version-1 encrypted update")
    current = bytearray(data[:_HEADER.size])
    current[4:6] = UPDATE_VERSION.to_bytes(2, "big")  # same framing: parse it as current
    layout = parse_layout(bytes(current) + data[_HEADER.size:])
    return EncryptedUpdate(
        key_id=layout.key_id, length=layout.length, slots=layout.slots,
        ciphertexts=tuple(wire.pack(data[a:b], widths) for a, b in layout.spans),
        n_updates=layout.n_updates).to_bytes()


def _check_same_key(ctx: FederationContext, key_id: str, slots: int) -> None:
    if key_id != ctx.key_id:
        raise FederationError(
            WRONG_KEY,
            # an update to the aggregator or a result to a box: the same framing
            f"encrypted under federation key {key_id}, this context is key {ctx.key_id}: "
            "another key epoch (an older result after a rotation, or a newer one this "
            "box has no key for yet), or another federation's",
        )
    if slots != ctx.params.slots:
        raise FederationError(MALFORMED, f"update uses {slots} slots, federation uses "
                              f"{ctx.params.slots}")


def encrypt_update(
    ctx: FederationContext,
    weights: np.ndarray,
    n_samples: int,
    count_scale: float = DEFAULT_COUNT_SCALE,
    *,
    headroom: int = DEFAULT_HEADROOM,
    bounds: Bounds | None = None,
    base: np.ndarray | None = None,
) -> EncryptedUpdate:
    """Encrypt ``c*n*w`` and ``c*n`` (c = 1/count_scale) for one box's update.

    Raises ``ValueError`` for bad arguments (non-finite weights, n < 1),
    ``FederationError(out_of_range)`` when the update would use more than 1/headroom of
    the CKKS value range (see the module docstring), and ``count_over_cap`` /
    ``change_over_clip`` when it breaks the federation's ``bounds`` (the clip is checked
    against ``base``, the round's base weights, when given).
    """
    w = np.asarray(weights)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty flat vector, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights must be floating point, got {w.dtype}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or infinity; refusing to encrypt them")
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not count_scale > 0:
        raise ValueError(f"count_scale must be positive, got {count_scale}")
    if bounds is not None:
        check_update(w, int(n_samples), bounds, base)
    c_n = float(n_samples) / float(count_scale)
    peak = c_n * max(float(np.max(np.abs(w))), 1.0)
    budget = ctx.params.value_bound / headroom
    if peak > budget:
        raise FederationError(
            OUT_OF_RANGE,
            f"n_samples/count_scale * max|w| = {peak:.1f} exceeds the per-update budget "
            f"{budget:.1f} of these CKKS parameters; raise count_scale (federation-wide), "
            f"cap n_samples, or send smaller values (weight deltas)",
        )
    slots = ctx.params.slots
    widths = wire_widths(ctx)
    flat = np.empty(w.size + 1, dtype=np.float64)
    np.multiply(w, c_n, out=flat[:-1], dtype=np.float64)
    flat[-1] = c_n
    cts = []
    try:
        for start in range(0, flat.size, slots):
            vec = ts.ckks_vector(ctx.context, flat[start : start + slots].tolist())
            cts.append(wire.serialize_vector(vec, widths))
    except ValueError as exc:  # e.g. a public-only asymmetric-less context
        raise FederationError(CANNOT_ENCRYPT, f"this CKKS context cannot encrypt: {exc}") from None
    return EncryptedUpdate(key_id=ctx.key_id, length=int(w.size), slots=slots,
                           ciphertexts=tuple(cts))


def wire_widths(ctx: FederationContext) -> tuple[int, ...]:
    """Bits per ciphertext coefficient on the wire for this federation's parameters."""
    return wire.widths_for(ctx.params.coeff_mod_bit_sizes)


def load_ciphertext(ctx: FederationContext, data: bytes | memoryview, expected_size: int,
                    i: int) -> ts.CKKSVector:
    """One wire ciphertext (bit-packed) as a TenSEAL vector of ``expected_size`` values;
    anything that does not unpack, load or hold that many values is ``malformed``."""
    return load_ciphertext_facts(ctx, data, expected_size, i)[0]


def load_ciphertext_facts(ctx: FederationContext, data: bytes | memoryview, expected_size: int,
                          i: int) -> tuple[ts.CKKSVector, wire.CiphertextFacts]:
    """``load_ciphertext`` and what SEAL's header says of it (level, size, scale)."""
    try:
        vec, facts = wire.load_vector_facts(ctx.context, data, wire_widths(ctx))
    except FederationError as exc:
        raise FederationError(MALFORMED, f"ciphertext {i}: {exc.message}") from None
    except Exception as exc:  # TenSEAL raises assorted errors on corrupt bytes
        raise FederationError(MALFORMED, f"ciphertext {i} does not deserialize: {exc}") from None
    if vec.size() != expected_size:
        raise FederationError(
            MALFORMED, f"ciphertext {i} holds {vec.size()} values, expected {expected_size}"
        )
    return vec, facts


def _chunk_sizes(length: int, slots: int) -> list[int]:
    total = length + 1
    return [min(slots, total - start) for start in range(0, total, slots)]


class StreamingSum:
    """Running homomorphic sum: memory is one model's ciphertexts, whatever the count.

    ``add`` validates the whole update (key, shape, every ciphertext deserializes at the
    expected size) before touching the running sum, so a bad update leaves it intact.
    """

    def __init__(self, ctx: FederationContext, length: int) -> None:
        if length <= 0:
            raise ValueError("length must be positive")
        self.ctx = ctx
        self.length = length
        self.count = 0
        self._sizes = _chunk_sizes(length, ctx.params.slots)
        self._sum: list[ts.CKKSVector] | None = None

    @classmethod
    def resume(cls, ctx: FederationContext, partial: EncryptedUpdate) -> StreamingSum:
        """Continue from a persisted partial sum (crash recovery, regional sums)."""
        s = cls(ctx, partial.length)
        s.add(partial)
        return s

    def add(self, update: EncryptedUpdate | bytes) -> None:
        if isinstance(update, (bytes, bytearray, memoryview)):
            update = EncryptedUpdate.from_bytes(bytes(update), self.ctx)
        _check_same_key(self.ctx, update.key_id, update.slots)
        if update.length != self.length:
            raise FederationError(
                MALFORMED, f"update has {update.length} values, this sum has {self.length}"
            )
        vectors = [
            load_ciphertext(self.ctx, ct, size, i)
            for i, (ct, size) in enumerate(zip(update.ciphertexts, self._sizes, strict=True))
        ]
        if self._sum is None:
            self._sum = vectors
        else:
            try:
                for acc, vec in zip(self._sum, vectors, strict=True):
                    acc += vec
            except ValueError as exc:  # scale/parms mismatch: TenSEAL refuses to add
                raise FederationError(MALFORMED, f"ciphertexts cannot be added: {exc}") from None
        self.count += update.n_updates

    def result(self) -> EncryptedUpdate:
        if self._sum is None:
            raise ValueError("no update has been added yet")
        return EncryptedUpdate(
            key_id=self.ctx.key_id,
            length=self.length,
            slots=self.ctx.params.slots,
            ciphertexts=tuple(wire.serialize_vector(v, wire_widths(self.ctx)) for v in self._sum),
            n_updates=self.count,
        )


def decrypt_sums(ctx: FederationContext, summed: EncryptedUpdate) -> tuple[np.ndarray, float]:
    """Decrypt a (summed) update: returns (sum of c*n_i*w_i as float64, sum of c*n_i)."""
    require_secret(ctx)
    _check_same_key(ctx, summed.key_id, summed.slots)
    sizes = _chunk_sizes(summed.length, summed.slots)
    flat = np.empty(summed.length + 1, dtype=np.float64)
    offset = 0
    for i, (ct, size) in enumerate(zip(summed.ciphertexts, sizes, strict=True)):
        vec = load_ciphertext(ctx, ct, size, i)
        flat[offset : offset + size] = vec.decrypt()
        offset += size
    return flat[:-1], float(flat[-1])


def decrypt_average(ctx: FederationContext, summed: EncryptedUpdate) -> np.ndarray:
    """Weighted FedAvg from the two decrypted sums: sum(c n_i w_i) / sum(c n_i), float32."""
    return decrypt_within_bounds(ctx, summed, None, None)


def decrypt_within_bounds(ctx: FederationContext, summed: EncryptedUpdate,
                          policy: ResultPolicy | None, base: np.ndarray | None) -> np.ndarray:
    """Decrypt a round's sum and divide, refusing it if it breaks the round's bounds
    (``federation.crypto.bounds``: ``count_over_cap``, ``count_under_floor``,
    ``change_over_clip``). ``policy`` None: a round without bounds (an older aggregator,
    or the policy off): the count is only checked for range. ``base`` None: the box
    does not hold the round's base (it joins late), so only the count is checked."""
    weighted, count = decrypt_sums(ctx, summed)
    bound = ctx.params.value_bound
    # A sum of at least one update has c*n >= 1/count_scale > 0; a non-positive or
    # out-of-range count means wrapped or foreign ciphertexts, not a usable model.
    if not (math.isfinite(count) and 0 < count < bound):
        raise FederationError(
            OUT_OF_RANGE,
            f"decrypted sample count {count!r} is not in (0, {bound}): the sum overflowed "
            "the CKKS range or was encrypted under another key",
        )
    if policy is not None:
        check_sums(count, summed.n_updates, policy)
    avg = weighted / count
    if not np.all(np.isfinite(avg)):
        raise FederationError(OUT_OF_RANGE, "decrypted average is not finite")
    if policy is not None and base is not None:
        check_change(avg, base, policy, summed.n_updates, count)
    return avg.astype(np.float32)


def plain_weighted_average(vectors: Sequence[np.ndarray], counts: Sequence[float]) -> np.ndarray:
    """The plaintext oracle: np.average of the vectors weighted by sample counts (float64)."""
    return np.average(np.stack([np.asarray(v, dtype=np.float64) for v in vectors]), axis=0,
                      weights=np.asarray(counts, dtype=np.float64))
