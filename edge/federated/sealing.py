"""The two CPU-heavy steps of a round on the box, kept out of the client's event loop.

``seal_update``: local training -> CKKS encryption -> signed chunks -> on-disk outbox
(before anything is published). Runs in its own thread at a lower priority.
``check_average``: is a decrypted federated average fit to be served?
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import ResultRejected
from edge.federated.outbox import Outbox, PendingUpdate
from edge.training.api import LocalTrainer
from federation.chunking import split_blob
from federation.crypto.bounds import ResultPolicy, clip_update, dp_noise_allowance
from federation.crypto.ckks import FederationContext
from federation.crypto.dp import PrivacyLedger, epsilon, privatize
from federation.crypto.packing import encrypt_update
from federation.envelope import encode
from federation.errors import FederationError
from federation.files import write_atomic
from federation.messages import RoundAnnounce
from models.federated_parts import FederatedPart

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sealer:
    trainer: LocalTrainer
    context: FederationContext
    signing_key: Ed25519PrivateKey
    outbox: Outbox
    fed_id: str
    device_id: str
    ledger_path: Path | None = None  # privacy budget spent (DP rounds); None: no DP

    def seal(self, ann: RoundAnnounce, global_vector: np.ndarray | None,
             base_vector: np.ndarray | None = None) -> tuple[PendingUpdate, dict[str, Any]]:
        """Train, (DP: clip + noise), encrypt, sign, chunk and store one round's update;
        returns it + stats. ``base_vector``: the round's base weights (DP clips the delta
        against them)."""
        part = self.trainer.part
        update = self.trainer.local_update(global_vector, ann.round)
        vector = np.asarray(update.vector, dtype=np.float32).ravel()
        if vector.size != part.size or not np.all(np.isfinite(vector)):
            raise ValueError(f"trainer returned {vector.size} values (finite: "
                             f"{bool(np.all(np.isfinite(vector)))}); expected {part.size} "
                             "finite values")
        n_samples = int(update.n_samples)
        dp_stats: dict[str, Any] = {}
        bounds, clip_base = ann.bounds, None
        if ann.dp is not None:
            vector, n_samples, dp_stats = self._privatize(ann, vector, base_vector)
        elif bounds is not None and bounds.clip_norm is not None:
            # the federation's bounds (federation.crypto.bounds): every box's change is
            # clipped, so one box cannot move the average further than the clip
            if base_vector is None:
                raise ValueError("this round clips updates but the box has no base vector")
            vector, norm = clip_update(vector, base_vector, bounds.clip_norm)
            clip_base = base_vector
            if norm > bounds.clip_norm:  # worth knowing: a clip below honest steps slows learning
                log.info("round %d: change %.4g (L2) clipped to the federation's %g",
                         ann.round, norm, bounds.clip_norm)
            dp_stats["clip_delta_norm"] = norm
        if bounds is not None and n_samples > bounds.max_samples:
            log.info("round %d: %d samples weigh as the federation's cap of %d", ann.round,
                     n_samples, bounds.max_samples)
            n_samples = bounds.capped(n_samples)
        t0 = time.perf_counter()
        encrypted = encrypt_update(self.context, vector, n_samples,
                                   count_scale=ann.count_scale, bounds=bounds, base=clip_base)
        blob = encrypted.to_bytes()
        encrypt_s = time.perf_counter() - t0
        envelopes = split_blob(
            blob, self.signing_key, kind="update", fed=self.fed_id, sender=self.device_id,
            round=ann.round, model=ann.base_model, chunk_size=ann.chunk_size,
        )
        chunks = [encode(e) for e in envelopes]
        pending = self.outbox.put(ann.round, ann.base_model, envelopes[0].msg, chunks)
        stats = {"n_samples": int(update.n_samples), "weighed_as": n_samples,
                 "train_s": float(update.seconds),
                 "encrypt_s": encrypt_s, "bytes": pending.size, "chunks": len(chunks),
                 "vector": vector, **dp_stats}
        return pending, stats

    def _privatize(self, ann: RoundAnnounce, vector: np.ndarray, base: np.ndarray | None
                   ) -> tuple[np.ndarray, int, dict[str, Any]]:
        """Clip + noise the delta (federation.crypto.dp), spend the budget in the ledger BEFORE
        the noised update exists anywhere else, and weigh every box equally."""
        assert ann.dp is not None
        if base is None or self.ledger_path is None:
            raise ValueError("this round asks for differential privacy but the box has no "
                             "base vector / privacy ledger to apply it with")
        ledger = load_ledger(self.ledger_path)
        ledger.spend(ann.round, ann.dp)
        write_atomic(self.ledger_path, json.dumps(ledger.to_json()).encode(), mode=0o600)
        # under the federation's bounds, the smaller of the two clips (the noise scales
        # with it, so epsilon is unchanged)
        dp = ann.dp if ann.bounds is None else ann.bounds.dp_within(ann.dp)
        noisy, norm = privatize(vector, base, dp, ann.quorum)
        report = ledger.report()
        smaller = " (the federation's clip)" if dp.clip_norm < ann.dp.clip_norm else ""
        log.info("round %d: DP update (%s, clip %g%s, noise multiplier %g, delta norm %.3g): "
                 "epsilon %.2f this round, %.2f in total over %d round(s) at delta %g (%s)",
                 ann.round, ann.dp.mode, dp.clip_norm, smaller, ann.dp.noise_multiplier, norm,
                 epsilon(ann.dp, 1), report["epsilon_total"], report["rounds"],
                 ann.dp.delta, report["accountant"])
        # Equal weights: c*n = 1 whatever the box's (data-dependent) sample count.
        n_equal = max(1, round(ann.count_scale))
        return noisy, n_equal, {"dp": report, "dp_delta_norm": norm}


def load_ledger(path: Path) -> PrivacyLedger:
    """The box's privacy ledger (empty if none yet). A corrupt ledger is an error, not a
    reset: forgetting spent budget would under-report it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return PrivacyLedger([])
    except ValueError as exc:
        raise FederationError("malformed", f"privacy ledger {path} is corrupt ({exc}); "
                              "restore it from a backup, never delete it") from None
    return PrivacyLedger.from_json(data)



def check_average(average: np.ndarray, current: np.ndarray, part: FederatedPart,
                  max_relative_change: float, policy: ResultPolicy | None = None,
                  n_updates: int = 1) -> None:
    """Raise ResultRejected unless ``average`` has the part's length, is finite, and moves
    the weights by at most ``max_relative_change`` of their norm (an average of honest
    fine-tuning steps does not jump; a forged or overflowed sum does), plus the norm the
    round's DP noise stays under (``policy``: the noise of ``n_updates`` updates is part
    of an honest average; a walkthrough saw every honest local-mode DP round refused)."""
    if average.size != part.size:
        raise ResultRejected("malformed", f"result has {average.size} values, part "
                             f"{part.key} has {part.size}")
    if not np.all(np.isfinite(average)):
        raise ResultRejected("out_of_range", "result holds NaN or infinite values")
    base_norm = max(float(np.linalg.norm(current)), 1e-12)
    moved = float(np.linalg.norm(np.asarray(average, np.float64) - current))
    noise = dp_noise_allowance(policy, n_updates, average.size)
    if moved > max_relative_change * base_norm + noise:
        dp = f" plus {noise / base_norm:.0%} for the round's DP noise" if noise else ""
        raise ResultRejected(
            "out_of_range", f"result moves the weights by {moved / base_norm:.1%} of their "
            f"norm (limit {max_relative_change:.0%}{dp}): not a plausible average")
