"""Aggregator peak RSS for one round with many boxes vs few, same model size.

    .venv/bin/python -m bench.aggregator.memory [--length 1052928] [--few 2] [--many 20]

Default length: the conv14 part's 1,052,928 values, the "same 1M-parameter updates" the
issue asks for (the default part, embed_bn, is 5,376 values: memory is no concern there).

The streaming sum keeps one model's ciphertexts (plus the one update being added)
whatever the number of clients, and chunks of updates still in flight are spooled to
disk, so peak RSS should not grow with the box count. Boxes are two processes that each
play half of the devices: they encrypt every update first (real CKKS, federation API),
then publish all of them round-robin, chunk by chunk, so every update is in flight at
once (the worst case for reassembly). Peak RSS = the aggregator process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import sys

from bench.rig.aggregator import service_argv
from bench.rig.compare import Measured, comparison, print_comparisons
from bench.rig.session import RigSession
from models.federated_parts import CONV14


def one_round(n_boxes: int, length: int, chunk: int) -> tuple[float, float]:
    with RigSession(f"aggmem-{n_boxes}-", n_boxes) as rig:
        fed = rig.fed
        boxes = rig.start_boxes([fed.devices[0::2], fed.devices[1::2]], 1, chunk,
                                secret=fed.secret_path, length=length)
        agg = rig.start_aggregator(service_argv(fed.state, rig.url, n_boxes, 1, length=length,
                                                chunk=chunk))
        round_s = rig.watch.wait_published(1, 1800)
        reports = [lines[-1] for lines in boxes.reports(300)]
        assert all(r["accepted"] for r in reports), reports
        return agg.stop(60)["peak_rss_mb"], round_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=CONV14.size)
    p.add_argument("--few", type=int, default=2)
    p.add_argument("--many", type=int, default=20)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    ns = p.parse_args()
    rss: dict[int, list[float]] = {ns.few: [], ns.many: []}
    for run in range(ns.runs):
        for n in (ns.few, ns.many):
            print(f"run {run + 1}: {n} boxes x {ns.length:,} params...", file=sys.stderr,
                  flush=True)
            peak, round_s = one_round(n, ns.length, ns.chunk_size)
            rss[n].append(peak)
            print(f"  {n:3d} boxes: aggregator peak RSS {peak:.0f} MB, round {round_s:.1f} s",
                  file=sys.stderr, flush=True)
    few = Measured.of(f"{ns.few} boxes", rss[ns.few])
    many = Measured.of(f"{ns.many} boxes", rss[ns.many])
    print(f"\naggregator peak RSS, one round, {ns.length:,} parameters (median of {ns.runs})")
    print(f"  {ns.few:3d} boxes: {few.median:.0f} MB")
    print(f"  {ns.many:3d} boxes: {many.median:.0f} MB")
    print_comparisons("bench.aggregator.memory", [
        comparison("aggregator peak RSS", many, few, "MB", "{:.0f}", within=0.2)])


if __name__ == "__main__":
    main()
