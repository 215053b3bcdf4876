"""A box in a process of its own, for tests that kill it hard (SIGKILL)
(``python -m tests.support.status_box_child ROOT BROKER_URL DEVICE SECRET_CONTEXT``):
a FederationClient on a real MQTT connection (its last will built at connect, as in
production) in a ``Federation`` rig made by the test. It federates round 1 and applies
its result, then trains no more (a later round's training waits until the process is
killed), so the last model it reports is known: round-1."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from edge.training.api import LocalTrainer, LocalUpdate
from edge.training.drift import NumpyDriftTrainer
from tests.support.federation_rig import PART, Federation, part_base_vector


class FirstRoundOnly:
    def __init__(self, inner: LocalTrainer) -> None:
        self.inner = inner
        self.part = inner.part

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        if round_no > 1:
            threading.Event().wait()  # the round stays open until the test kills us
        return self.inner.local_update(global_vector, round_no)


def main() -> int:
    root, url, device, secret = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    fed = Federation(root, url, secret, root / "aggregator")
    trainer = FirstRoundOnly(NumpyDriftTrainer(PART, part_base_vector(), device, 50, step=1e-2))
    box = fed.start_box(device, trainer=trainer)
    print(f"box {device} started", flush=True)
    printed = 0
    while True:  # until killed; what the box did, for the test's failure message
        for event in box.events[printed:]:
            print(f"event {event.kind} round {event.round}", flush=True)
            printed += 1
        threading.Event().wait(0.5)


if __name__ == "__main__":
    sys.exit(main())
