"""The running sum of one round, behind a small interface so the coordinator does not know
whether it adds CKKS ciphertexts (the product) or float32 vectors (the plaintext
baseline of bench/he_overhead.py).

An update is added in two steps so that it can be made durable in between:
``prepare`` parses and validates it completely (deserialises every ciphertext and checks
its scale and parameters) without touching the sum; the coordinator then persists the
accepted blob; ``commit`` adds the prepared update in place (``+=``), which cannot fail
for a prepared update. The sum is serialised only when the round closes (``to_bytes``).

Memory is one model: each update is deserialised, added into the running sum and
dropped before the next one (holding ten 1M-value updates at once peaked at 2.4 GiB;
the streaming sum stays at one update + one sum whatever the client count).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np
import tenseal as ts

from federation.ckks import FederationContext, require_public_only
from federation.errors import MALFORMED, WRONG_KEY, FederationError
from federation.packing import EncryptedUpdate, parse_layout

# TenSEAL releases the GIL while it (de)serialises (SEAL's zstd dominates): a few threads
# deserialise an update / serialise the result that much faster on a multi-core server.
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None
T = TypeVar("T")
R = TypeVar("R")


def _map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` in order, on the module's thread pool."""
    global _POOL
    if _WORKERS == 1:
        return [fn(x) for x in items]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="ckks")
    return list(_POOL.map(fn, items))


class UpdateRejected(Exception):
    """An update blob cannot be added (wrong format, wrong length, wrong parameters)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# A validated update, ready to be added: opaque to the coordinator.
Prepared = object


class Accumulator(Protocol):
    @property
    def count(self) -> int: ...

    def prepare(self, blob: bytes) -> Prepared:
        """Parse and validate one update; raise UpdateRejected. Never touches the sum."""
        ...

    def commit(self, prepared: Prepared) -> None:
        """Add a prepared update to the sum in place."""

    def add_blob(self, blob: bytes) -> None:
        """prepare + commit (rebuilding a sum from stored updates)."""

    def to_bytes(self) -> bytes:
        """The running sum, serialised: this is the published result blob."""
        ...


class AccumulatorFactory(Protocol):
    def new(self) -> Accumulator: ...

    def restore(self, data: bytes, count: int) -> Accumulator:
        """Rebuild a running sum from ``to_bytes()`` output (a state directory written by
        a version that persisted the running sum after every update)."""
        ...


class PlainAccumulator:
    """float32 baseline: blob = raw little-endian float32 vector [c*n*w..., c*n]."""

    def __init__(self, length: int, data: np.ndarray | None = None, count: int = 0) -> None:
        self.length = length
        self.total = np.zeros(length, dtype=np.float64) if data is None else data
        self.count = count

    def prepare(self, blob: bytes) -> Prepared:
        if len(blob) != 4 * self.length:
            raise UpdateRejected(
                "malformed", f"plain update is {len(blob)} bytes, expected {4 * self.length}"
            )
        return np.frombuffer(blob, dtype="<f4")

    def commit(self, prepared: Prepared) -> None:
        assert isinstance(prepared, np.ndarray)
        np.add(self.total, prepared, out=self.total)
        self.count += 1

    def add_blob(self, blob: bytes) -> None:
        self.commit(self.prepare(blob))

    def to_bytes(self) -> bytes:
        return self.total.astype("<f8").tobytes()


class PlainAccumulatorFactory:
    def __init__(self, length: int) -> None:
        self.length = length

    def new(self) -> Accumulator:
        return PlainAccumulator(self.length)

    def restore(self, data: bytes, count: int) -> Accumulator:
        return PlainAccumulator(self.length, np.frombuffer(data, dtype="<f8").copy(), count)


class _CkksUpdate:
    def __init__(self, length: int, n_updates: int, vectors: list[ts.CKKSVector]) -> None:
        self.length = length
        self.n_updates = n_updates
        self.vectors = vectors


class CkksAccumulator:
    """The product's sum: CKKS ciphertexts added with TenSEAL, under a public-only context.

    The vector length is fixed by the first update of the round unless configured; a
    later update of another length is rejected as malformed, the sum untouched.
    """

    def __init__(self, ctx: FederationContext, length: int | None) -> None:
        self.ctx = ctx
        self.length = length
        self.count = 0
        self._sum: list[ts.CKKSVector] | None = None
        self._sum_length = length  # fixed by the configuration or by the first update
        self._scale = float(ctx.context.global_scale)

    def prepare(self, blob: bytes) -> Prepared:
        try:
            return self._parse(blob)
        except FederationError as exc:
            raise UpdateRejected(exc.reason, exc.message) from None

    def _parse(self, blob: bytes) -> _CkksUpdate:
        """The update's ciphertexts deserialised straight from the blob (no intermediate
        EncryptedUpdate holding a copy of every ciphertext), on a few threads."""
        layout = parse_layout(blob)
        length, slots, n_updates = layout.length, layout.slots, layout.n_updates
        if layout.key_id != self.ctx.key_id:
            raise FederationError(
                WRONG_KEY, f"update was encrypted under federation key {layout.key_id}, "
                f"the aggregator holds {self.ctx.key_id}")
        if slots != self.ctx.params.slots:
            raise FederationError(MALFORMED, f"update packed at {slots} slots, the federation "
                                  f"{self.ctx.params.slots}")
        if self._sum_length is not None and length != self._sum_length:
            raise FederationError(
                MALFORMED, f"update has {length} values, the federation {self._sum_length}")
        spans = layout.spans
        count = len(spans)
        view = memoryview(blob)

        def load(i: int) -> ts.CKKSVector:  # TenSEAL takes bytes: one slice per ciphertext
            start, end = spans[i]
            return self._load(bytes(view[start:end]), min(slots, length + 1 - i * slots), i)

        vectors = _map(load, range(count))
        self._check_compatible(vectors)
        return _CkksUpdate(length, n_updates, vectors)

    def _check_compatible(self, vectors: list[ts.CKKSVector]) -> None:
        """+= raises on a scale/level mismatch half-way through the sum: check every
        ciphertext here, so that commit() cannot fail on an update already stored."""
        ref = self._sum[0] if self._sum is not None else vectors[0]
        (ref_ct,) = ref.ciphertext()
        parms = ref_ct.parms_id()
        for i, vec in enumerate(vectors):
            (ct,) = vec.ciphertext()
            if ct.scale != self._scale or ct.size() != 2:
                raise FederationError(
                    MALFORMED, f"ciphertext {i}: scale 2^{np.log2(ct.scale):.1f} / size "
                    f"{ct.size()}, expected a fresh ciphertext at the federation scale")
            if ct.parms_id() != parms:
                raise FederationError(MALFORMED, f"ciphertext {i} is at another level")

    def _load(self, data: bytes, expected_size: int, i: int) -> ts.CKKSVector:
        try:
            vec = ts.ckks_vector_from(self.ctx.context, data)
        except Exception as exc:  # TenSEAL raises assorted errors on corrupt bytes
            raise FederationError(
                MALFORMED, f"ciphertext {i} does not deserialize: {exc}") from None
        if vec.size() != expected_size:
            raise FederationError(
                MALFORMED, f"ciphertext {i} holds {vec.size()} values, expected {expected_size}")
        return vec

    def commit(self, prepared: Prepared) -> None:
        update = prepared
        assert isinstance(update, _CkksUpdate)
        if self._sum is None:
            self._sum = update.vectors
            self._sum_length = update.length
        else:
            for acc, vec in zip(self._sum, update.vectors, strict=True):
                acc += vec
        self.count += update.n_updates

    def add_blob(self, blob: bytes) -> None:
        self.commit(self.prepare(blob))

    def to_bytes(self) -> bytes:
        if self._sum is None or self._sum_length is None:
            raise ValueError("empty sum")
        return EncryptedUpdate(
            key_id=self.ctx.key_id, length=self._sum_length, slots=self.ctx.params.slots,
            ciphertexts=tuple(_map(lambda v: v.serialize(), self._sum)), n_updates=self.count,
        ).to_bytes()


class CkksAccumulatorFactory:
    def __init__(self, ctx: FederationContext, length: int | None = None) -> None:
        require_public_only(ctx)
        self.ctx = ctx
        self.length = length

    def new(self) -> Accumulator:
        return CkksAccumulator(self.ctx, self.length)

    def restore(self, data: bytes, count: int) -> Accumulator:
        partial = EncryptedUpdate.from_bytes(data, self.ctx)
        if partial.n_updates != count:
            raise ValueError(f"sum blob holds {partial.n_updates} updates, the db says {count}")
        acc = CkksAccumulator(self.ctx, partial.length)
        vectors = [acc._load(ct, min(partial.slots, partial.length + 1 - i * partial.slots), i)
                   for i, ct in enumerate(partial.ciphertexts)]
        acc.commit(_CkksUpdate(partial.length, partial.n_updates, vectors))
        return acc
