"""Cost of one local training round on a box with 80 enrolled people (one core).

    .venv/bin/python -m bench.edge.trainer_cost [--people 80] [--part conv14]

Round 1 includes computing and caching the frozen-trunk features of every augmented
view; later rounds only train the tail. The round runs the way a box runs it: in a
child process at nice 10 with one torch thread, whose round 1 also computes the trunk
features (as a box's does). Peak RSS per round is that round's child's high-water mark
(VmHWM, polled); this process's is the one holding the crops.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

from bench.common.lfw import enrolment_crops
from bench.common.peak_rss import ChildrenPeak
from edge.training.trainer import TorchLocalTrainer, TrainConfig
from models.federated_parts import DEFAULT_PART, get_part
from models.registry import model_path

REPO = Path(__file__).resolve().parents[2]  # the checkout (../shared beside it)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--people", type=int, default=80)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--part", default=DEFAULT_PART)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--niceness", type=int, default=10,
                        help="0 measures the compute cost on a machine busy with other work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    crops = enrolment_crops(args.data / "lfw", args.people, args.per_person)
    n_crops = sum(len(c) for c in crops.values())
    part = get_part(args.part)
    with tempfile.TemporaryDirectory() as tmp, ChildrenPeak() as children:
        trainer = TorchLocalTrainer(model_path("sface"), crops, Path(tmp), part,
                                    TrainConfig(), n_views=args.views, niceness=args.niceness)
        vector = None
        print(f"box: {len(crops)} people, {n_crops} crops x {args.views} views; part "
              f"{part.key} ({part.size:,} values); one core, nice {args.niceness}")
        for r in range(args.rounds):
            t0 = time.perf_counter()
            update = trainer.local_update(vector, r)
            seconds = time.perf_counter() - t0
            vector = update.vector
            result = trainer.last_result
            assert result is not None
            peak = children.newest_peak() / 2**20
            print(f"round {r + 1}: {seconds:6.1f} s total, "
                  f"{result.seconds:5.1f} s training ({result.steps} steps), "
                  f"n_samples {update.n_samples}, trainer peak RSS {peak:.0f} MB"
                  f"{' (includes trunk features)' if r == 0 else ''}")
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (the box's side: crops): {self_mb:.0f} MB")


if __name__ == "__main__":
    main()
