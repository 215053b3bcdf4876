"""The running sum of one round, behind a small interface so the coordinator does not know
whether it adds CKKS ciphertexts (the product) or float32 vectors (the plaintext
baseline of bench/he_overhead.py).

Memory is one model: each update is deserialised, added into the running sum in place
and dropped before the next one arrives (holding ten 1M-value updates at once peaked at
2.4 GiB; the streaming sum stays at one update + one sum whatever the client count).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from federation.ckks import FederationContext, require_public_only
from federation.errors import MALFORMED, FederationError
from federation.packing import EncryptedUpdate, StreamingSum


class UpdateRejected(Exception):
    """An update blob cannot be added (wrong format, wrong length, wrong parameters)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Accumulator(Protocol):
    @property
    def count(self) -> int: ...

    def add_blob(self, blob: bytes) -> None:
        """Add one update (serialised); raise UpdateRejected if it cannot be added."""

    def to_bytes(self) -> bytes:
        """The running sum, serialised: this is also the published result blob."""


class AccumulatorFactory(Protocol):
    def new(self) -> Accumulator: ...

    def restore(self, data: bytes, count: int) -> Accumulator:
        """Rebuild a running sum from ``to_bytes()`` output (after a restart)."""
        ...


class PlainAccumulator:
    """float32 baseline: blob = raw little-endian float32 vector [c*n*w..., c*n]."""

    def __init__(self, length: int, data: np.ndarray | None = None, count: int = 0) -> None:
        self.length = length
        self.total = np.zeros(length, dtype=np.float64) if data is None else data
        self.count = count

    def add_blob(self, blob: bytes) -> None:
        if len(blob) != 4 * self.length:
            raise UpdateRejected(
                "malformed", f"plain update is {len(blob)} bytes, expected {4 * self.length}"
            )
        self.total += np.frombuffer(blob, dtype="<f4")
        self.count += 1

    def to_bytes(self) -> bytes:
        return self.total.astype("<f8").tobytes()


class PlainAccumulatorFactory:
    def __init__(self, length: int) -> None:
        self.length = length

    def new(self) -> Accumulator:
        return PlainAccumulator(self.length)

    def restore(self, data: bytes, count: int) -> Accumulator:
        return PlainAccumulator(self.length, np.frombuffer(data, dtype="<f8").copy(), count)


class CkksAccumulator:
    """The product's sum: CKKS ciphertexts added with TenSEAL, under a public-only context.

    The vector length is fixed by the first update of the round unless configured; a
    later update of another length is rejected as malformed, the sum untouched.
    """

    def __init__(
        self, ctx: FederationContext, length: int | None, running: StreamingSum | None = None
    ) -> None:
        self.ctx = ctx
        self.length = length
        self.running = running

    @property
    def count(self) -> int:
        return 0 if self.running is None else self.running.count

    def add_blob(self, blob: bytes) -> None:
        try:
            update = EncryptedUpdate.from_bytes(blob, self.ctx)
            if self.running is None:
                if self.length is not None and update.length != self.length:
                    raise FederationError(
                        MALFORMED,
                        f"update has {update.length} values, the federation {self.length}",
                    )
                running = StreamingSum(self.ctx, update.length)
                running.add(update)
                self.running = running
            else:
                self.running.add(update)
        except FederationError as exc:
            raise UpdateRejected(exc.reason, exc.message) from None

    def to_bytes(self) -> bytes:
        if self.running is None:
            raise ValueError("empty sum")
        return self.running.result().to_bytes()


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
        return CkksAccumulator(self.ctx, partial.length, StreamingSum.resume(self.ctx, partial))
