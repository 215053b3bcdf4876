"""A federation's round settings: what ``serve`` announces with every round and how it
runs them (deadline, quorum, extensions, schedule). Kept apart from the state machine
(aggregator.rounds.coordinator), which re-exports ``RoundSettings`` for its callers.

May import: aggregator.rounds.schedule, federation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.rounds.schedule import RoundSchedule
from federation.crypto.bounds import Bounds
from federation.crypto.dp import DpConfig
from federation.crypto.packing import DEFAULT_COUNT_SCALE


@dataclass(frozen=True)
class RoundSettings:
    deadline_seconds: float = 300.0
    quorum: int = 2
    count_scale: float = DEFAULT_COUNT_SCALE  # announced; boxes encrypt with it
    part_key: str = ""
    chunk_size: int = 256 * 1024
    max_extensions: int = 3
    dp: DpConfig | None = None  # differential privacy every box applies (federation.crypto.dp)
    schedule: RoundSchedule = field(default_factory=RoundSchedule)  # when rounds may open
    min_new_samples: int = 0  # announced: boxes with fewer new samples sit the round out
    # announced: the cap on a box's n and the clip of its delta, which every box checks
    # the decrypted result against (federation.crypto.bounds); None: no bounds
    bounds: Bounds | None = None
    key_id: str = ""  # the public context's key and epoch, announced (set by the service)
    key_epoch: int = 0

    def __post_init__(self) -> None:
        if self.min_new_samples < 0:
            raise ValueError("min new samples must be >= 0")
        if not self.count_scale > 0:
            raise ValueError("count_scale must be > 0")
        if self.deadline_seconds <= 0:
            raise ValueError("round deadline must be > 0 seconds")
        if self.quorum < 1:
            raise ValueError("quorum must be >= 1")
        if self.chunk_size < 1024:
            raise ValueError("chunk size must be >= 1024 bytes")
