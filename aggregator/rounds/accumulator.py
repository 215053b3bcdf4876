"""The running sum of one round, behind a small interface so the coordinator does not know
whether it adds CKKS ciphertexts (the product) or float32 vectors (the plaintext
baseline of bench/federation/he_overhead.py).

Updates are added in batches, so that a batch can be made durable with ONE group commit
in between (aggregator.state.store.accept_updates):

- ``stage_many`` parses and validates each update completely (unpacks every
  ciphertext, checks it as SEAL would on load, and its scale and level) and adds the
  valid ones into a *staged* sum, never into the round's sum; it answers per update
  (None, or why it was refused);
- the coordinator then stores the valid updates durably;
- ``commit_staged`` adds the staged sum into the round's sum (one model-sized ``+=``,
  which cannot fail for validated ciphertexts), or ``discard_staged`` drops it when the
  store failed, leaving the sum exactly as it was.

``prepare``/``commit`` are the one-update form of the same thing. The sum is serialised
only when the round closes (``to_bytes``).

Memory is bounded by models, not by clients: the sum, the staged sum and the one update
being parsed (holding ten 1M-value updates at once peaked at 2.4 GiB; this stays at
three models whatever the batch or client count).

Unpacking and checking an update is many small numpy calls under the GIL (and TenSEAL,
still used once per new ciphertext metadata, holds the GIL throughout), so threads do
not sum in parallel; ``aggregator.rounds.sumpool`` runs these accumulators in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from aggregator.rounds.ciphertext_sum import CiphertextChecker
from federation.crypto import wire
from federation.crypto.ckks import FederationContext, require_public_only
from federation.crypto.packing import EncryptedUpdate, parse_layout
from federation.errors import MALFORMED, WRONG_KEY, FederationError


class UpdateRejected(Exception):
    """An update blob cannot be added (wrong format, wrong length, wrong parameters)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class AccumulatorBroken(Exception):
    """The sum itself is lost (a summing worker process died): rebuild it from disk."""


# A validated update, ready to be added: opaque to the coordinator.
Prepared = object
# An update to add: its bytes, or the file holding them (read by whoever sums it).
UpdateSource = bytes | Path


def read_source(source: UpdateSource) -> bytes:
    """The update's bytes (OSError if its file cannot be read)."""
    return source.read_bytes() if isinstance(source, Path) else source


class Accumulator(Protocol):
    @property
    def count(self) -> int: ...

    def stage_many(self, sources: Sequence[UpdateSource]) -> list[UpdateRejected | None]:
        """Validate each update and add the valid ones to the staged sum (never to the
        round's sum); per update: None (staged) or why it was refused."""
        ...

    def commit_staged(self) -> None:
        """Add the staged sum to the round's sum (after the batch was stored)."""

    def discard_staged(self) -> None:
        """Drop the staged sum (the batch could not be stored)."""

    def to_bytes(self) -> bytes:
        """The running sum, serialised: this is the published result blob."""
        ...


class AccumulatorFactory(Protocol):
    def new(self) -> Accumulator: ...

    def restore(self, data: bytes, count: int) -> Accumulator:
        """Rebuild a running sum from ``to_bytes()`` output (a state directory written by
        a version that persisted the running sum after every update)."""
        ...

    def close(self) -> None:
        """Release what the factory holds (worker processes); idempotent."""


def _stage_each(
    stage: Callable[[bytes], None], sources: Sequence[UpdateSource]
) -> list[UpdateRejected | None]:
    out: list[UpdateRejected | None] = []
    for source in sources:
        try:
            stage(read_source(source))
            out.append(None)
        except UpdateRejected as exc:
            out.append(exc)
        except OSError as exc:  # the spooled file vanished or cannot be read
            out.append(UpdateRejected("unavailable", f"cannot read the update: {exc}"))
    return out


class PlainAccumulator:
    """float32 baseline: blob = raw little-endian float32 vector [c*n*w..., c*n]."""

    def __init__(self, length: int, data: np.ndarray | None = None, count: int = 0) -> None:
        self.length = length
        self.total = np.zeros(length, dtype=np.float64) if data is None else data
        self.count = count
        self._staged: np.ndarray | None = None
        self._staged_count = 0

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

    def _stage(self, blob: bytes) -> None:
        vec = self.prepare(blob)
        assert isinstance(vec, np.ndarray)
        if self._staged is None:
            self._staged = np.zeros(self.length, dtype=np.float64)
        np.add(self._staged, vec, out=self._staged)
        self._staged_count += 1

    def stage_many(self, sources: Sequence[UpdateSource]) -> list[UpdateRejected | None]:
        return _stage_each(self._stage, sources)

    def commit_staged(self) -> None:
        if self._staged is not None:
            np.add(self.total, self._staged, out=self.total)
            self.count += self._staged_count
        self.discard_staged()

    def discard_staged(self) -> None:
        self._staged, self._staged_count = None, 0

    def to_bytes(self) -> bytes:
        return self.total.astype("<f8").tobytes()


class PlainAccumulatorFactory:
    def __init__(self, length: int) -> None:
        self.length = length

    def new(self) -> Accumulator:
        return PlainAccumulator(self.length)

    def restore(self, data: bytes, count: int) -> Accumulator:
        return PlainAccumulator(self.length, np.frombuffer(data, dtype="<f8").copy(), count)

    def close(self) -> None:
        pass


class _CkksUpdate:
    def __init__(self, length: int, n_updates: int, cts: list[wire.Coefficients]) -> None:
        self.length = length
        self.n_updates = n_updates
        self.cts = cts


class CkksAccumulator:
    """The product's sum: CKKS ciphertexts added coefficient by coefficient modulo the
    data primes (``ciphertext_sum``: SEAL's own add, checked as SEAL checks on load),
    under a public-only context.

    The vector length is fixed by the first update of the round unless configured; a
    later update of another length is rejected as malformed, the sum untouched.
    """

    def __init__(self, ctx: FederationContext, length: int | None,
                 checker: CiphertextChecker | None = None) -> None:
        self.ctx = ctx
        self.length = length
        self.count = 0
        self._sum: list[wire.Coefficients] | None = None
        self._sum_length = length  # fixed by the configuration or by the first update
        self._checker = checker or CiphertextChecker(ctx)
        self._staged: _CkksUpdate | None = None

    def prepare(self, blob: bytes) -> Prepared:
        try:
            return self._parse(blob)
        except FederationError as exc:
            raise UpdateRejected(exc.reason, exc.message) from None

    def _expected_length(self) -> int | None:
        if self._sum_length is not None:
            return self._sum_length
        return None if self._staged is None else self._staged.length

    def _parse(self, blob: bytes) -> _CkksUpdate:
        """The update's ciphertexts unpacked straight from slices of the blob and checked
        completely (``CiphertextChecker.load``), so that adding them cannot fail on an
        update already stored."""
        layout = parse_layout(blob)
        length, slots, n_updates = layout.length, layout.slots, layout.n_updates
        if layout.key_id != self.ctx.key_id:
            raise FederationError(
                WRONG_KEY, f"update was encrypted under federation key {layout.key_id}, "
                f"the aggregator holds {self.ctx.key_id}")
        if slots != self.ctx.params.slots:
            raise FederationError(MALFORMED, f"update packed at {slots} slots, the federation "
                                  f"{self.ctx.params.slots}")
        expected = self._expected_length()
        if expected is not None and length != expected:
            raise FederationError(
                MALFORMED, f"update has {length} values, the federation {expected}")
        view = memoryview(blob)
        cts = [self._checker.load(view[start:end], min(slots, length + 1 - i * slots), i)
               for i, (start, end) in enumerate(layout.spans)]
        return _CkksUpdate(length, n_updates, cts)

    def _add(self, total: _CkksUpdate | None, update: _CkksUpdate) -> _CkksUpdate:
        if total is None:  # the first: its arrays become the sum
            return update
        for acc, ct in zip(total.cts, update.cts, strict=True):
            self._checker.add_into(acc, ct)
        total.n_updates += update.n_updates
        return total

    def commit(self, prepared: Prepared) -> None:
        update = prepared
        assert isinstance(update, _CkksUpdate)
        if self._sum is None:
            self._sum = update.cts
            self._sum_length = update.length
        else:
            for acc, ct in zip(self._sum, update.cts, strict=True):
                self._checker.add_into(acc, ct)
        self.count += update.n_updates

    def add_blob(self, blob: bytes) -> None:
        self.commit(self.prepare(blob))

    def _stage(self, blob: bytes) -> None:
        update = self.prepare(blob)
        assert isinstance(update, _CkksUpdate)
        self._staged = self._add(self._staged, update)

    def stage_many(self, sources: Sequence[UpdateSource]) -> list[UpdateRejected | None]:
        return _stage_each(self._stage, sources)

    @property
    def staged_count(self) -> int:
        return 0 if self._staged is None else self._staged.n_updates

    def commit_staged(self) -> None:
        staged, self._staged = self._staged, None
        if staged is not None:
            self.commit(staged)

    def discard_staged(self) -> None:
        self._staged = None

    def to_bytes(self) -> bytes:
        if self._sum is None or self._sum_length is None:
            raise ValueError("empty sum")
        return EncryptedUpdate(
            key_id=self.ctx.key_id, length=self._sum_length, slots=self.ctx.params.slots,
            ciphertexts=tuple(self._checker.pack(ct) for ct in self._sum),
            n_updates=self.count,
        ).to_bytes()


class CkksAccumulatorFactory:
    def __init__(self, ctx: FederationContext, length: int | None = None) -> None:
        require_public_only(ctx)
        self.ctx = ctx
        self.length = length
        self.checker = CiphertextChecker(ctx)  # shared: its primes and checked metadata

    def new(self) -> CkksAccumulator:
        return CkksAccumulator(self.ctx, self.length, self.checker)

    def restore(self, data: bytes, count: int) -> CkksAccumulator:
        acc = CkksAccumulator(self.ctx, None, self.checker)
        partial = acc._parse(data)
        if partial.n_updates != count:
            raise ValueError(f"sum blob holds {partial.n_updates} updates, the db says {count}")
        acc.commit(partial)
        return acc

    def close(self) -> None:
        pass
