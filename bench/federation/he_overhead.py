"""Round wall time, CKKS-encrypted vs plaintext FedAvg, same transport, same run.

    .venv/bin/python -m bench.federation.he_overhead [--length 1052928] [--boxes 3] [--rounds 3]
        [--runs 2] [--train-people 8] [--train-budget 20] [--no-train]

Both modes: a real Mosquitto started here on a free port, the aggregator service in its
own process (same spooling, persistence with fsync, signing and chunking), one process
per box. Round time = announce(r) seen -> model/latest(r) seen by one watcher client,
INCLUDING box-side preparation (encryption for CKKS, scaling for plaintext), done in
parallel by the box processes (all on this machine's cores, shared with the aggregator
and the broker). Plaintext = raw float32 [c*n*w, c*n] blobs, numpy sum at the aggregator.
Median over all rounds of all runs; bytes on the wire per box per round (upload) and the
result size.

Figures (the issue asks for "the same 1M-parameter updates": the conv14 part, 1,052,928
values, explicitly, whatever the project's default part is):
- A. update only: each box's work in the round is preparing a synthetic update of
  ``--length`` values (default conv14's size; the cost of the federation machinery alone);
- B. full round, conv14: each box first runs its real local training step
  (``edge.training.trainer``, torch, on its own ``--train-people`` LFW people with trunk features
  cached beforehand, a fixed ``--train-budget`` seconds of training, in the box process),
  then prepares the trained conv14 vector - in BOTH arms, since a real round always
  includes training (NVIDIA FLARE's 1.7x HE-vs-plain reference includes training);
- C. full round, the default part (``models.federated_parts.DEFAULT_PART``, embed_bn,
  5,376 values): the same, with the part the product federates by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

import numpy as np

from bench.rig.aggregator import service_argv
from bench.rig.compare import Measured, comparison, print_comparisons
from bench.rig.session import RigSession
from bench.rig.state import COUNT_SCALE, box_vector
from models.federated_parts import CONV14, DEFAULT_PART, get_part


def run_mode(
    mode: str, length: int, n_boxes: int, rounds: int, chunk: int, precompute: bool = False,
    train: tuple[int, float] | None = None, part: str = CONV14.name,
) -> dict[str, Any]:
    if train is not None:
        length = get_part(part).size
    options: dict[str, Any] = {"secret": None, "mode": mode, "length": length,
                               "precompute": precompute}
    if train is not None:
        options.update(train_people=train[0], train_budget=train[1], n_boxes=n_boxes,
                       part=part)
    with RigSession(f"he-{mode}-", n_boxes) as rig:
        fed, watcher = rig.fed, rig.watch
        options["secret"] = fed.secret_path
        boxes = rig.start_boxes([[d] for d in fed.devices], rounds, chunk, **options)
        agg = rig.start_aggregator(service_argv(fed.state, rig.url, n_boxes, rounds, mode=mode,
                                                length=length, chunk=chunk))
        times = [watcher.wait_published(r, 900) for r in range(1, rounds + 1)]
        per_round = [sorted(lines, key=lambda x: x["round"]) for lines in boxes.reports(120)]
        reports = [lines[-1] for lines in per_round]
        agg_report = agg.stop(60)
        assert all(r["accepted"] for r in reports), reports
        upload = statistics.median(
            v for r in reports for v in r["upload_bytes"].values()
        )
        prepare = [statistics.median(r[i]["prepare_s"] for r in per_round)
                   for i in range(rounds)]
        trained = [statistics.median(r[i]["train_s"] for r in per_round) for i in range(rounds)]
        error = float("nan")
        if mode == "ckks" and train is None:  # sanity: result = the plain weighted average
            from federation.crypto.keys import load_secret_context
            from federation.crypto.packing import (
                EncryptedUpdate,
                decrypt_average,
                plain_weighted_average,
            )

            secret = load_secret_context(fed.secret_path)
            got = decrypt_average(secret, EncryptedUpdate.from_bytes(watcher.result_blob(rounds)))
            pairs = [box_vector(i, rounds, length) for i in range(n_boxes)]
            want = plain_weighted_average([v for v, _ in pairs], [n for _, n in pairs])
            error = float(np.max(np.abs(got - want)))
        return {
            "rounds_s": times,
            "prepare_s": prepare,
            "train_s": trained,
            "length": length,
            "upload_bytes": upload,
            "result_bytes": watcher.result_bytes[rounds],
            "agg_peak_rss_mb": agg_report["peak_rss_mb"],
            "max_abs_error": error,
        }


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one variant: medians over every round of every run."""
    return {
        "round_s": statistics.median(t for r in results for t in r["rounds_s"]),
        "rounds_s": [round(t, 2) for r in results for t in r["rounds_s"]],
        "round_runs": [t for r in results for t in r["rounds_s"]],
        "prepare_s": statistics.median(t for r in results for t in r["prepare_s"]),
        "train_s": statistics.median(t for r in results for t in r["train_s"]),
        "upload_bytes": statistics.median(r["upload_bytes"] for r in results),
        "result_bytes": statistics.median(r["result_bytes"] for r in results),
        "agg_peak_rss_mb": statistics.median(r["agg_peak_rss_mb"] for r in results),
        "max_abs_error": max(r["max_abs_error"] for r in results),
        "length": results[0]["length"],
    }


ROWS = [("round wall time (s)", "round_s", "{:.2f}"),
        ("box training in round (s)", "train_s", "{:.2f}"),
        ("box work in round (s)", "prepare_s", "{:.2f}"),  # training + encrypt + sign
        ("upload per box (MB)", "upload_bytes", "{:.1f}"),
        ("result download (MB)", "result_bytes", "{:.1f}"),
        ("aggregator peak RSS (MB)", "agg_peak_rss_mb", "{:.0f}")]


def _table(base: dict[str, Any], others: list[tuple[str, dict[str, Any]]]) -> None:
    head = f"{'':27}{'plaintext':>11}"
    for name, _ in others:
        head += f"{name:>11}{'ratio':>8}"
    print(head)
    for label, key, fmt in ROWS:
        scale = 1e6 if "bytes" in key else 1.0
        a = base[key] / scale
        line = f"{label:27}{fmt.format(a):>11}"
        for _, res in others:
            b = res[key] / scale
            ratio = f"{b / a:>7.2f}x" if a > 0 else f"{'-':>8}"
            line += f"{fmt.format(b):>11}{ratio}"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=CONV14.size,
                   help="synthetic update values (default: conv14's 1,052,928)")
    p.add_argument("--boxes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    p.add_argument("--train-people", type=int, default=8, help="LFW people per box")
    p.add_argument("--train-budget", type=float, default=20.0, help="training seconds/round")
    p.add_argument("--no-train", action="store_true", help="skip the full-round figure")
    ns = p.parse_args()
    train = (ns.train_people, ns.train_budget)
    default = get_part(DEFAULT_PART)
    variants: list[tuple[str, str, bool, tuple[int, float] | None, str]] = [
        ("plain", "plain", False, None, CONV14.name), ("ckks", "ckks", False, None, CONV14.name),
        ("ckks_pre", "ckks", True, None, CONV14.name)]
    if not ns.no_train:
        variants += [("plain_train", "plain", False, train, CONV14.name),
                     ("ckks_train", "ckks", False, train, CONV14.name)]
        if default.name != CONV14.name:
            variants += [("plain_default", "plain", False, train, default.name),
                         ("ckks_default", "ckks", False, train, default.name)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
    for run in range(ns.runs):
        for name, mode, precompute, tr, part in variants:
            print(f"run {run + 1}/{ns.runs}: {name}, {ns.boxes} boxes x {ns.rounds} rounds...",
                  file=sys.stderr, flush=True)
            runs[name].append(run_mode(mode, ns.length, ns.boxes, ns.rounds, ns.chunk_size,
                                       precompute, tr, part))
    res = {name: _merge(r) for name, r in runs.items()}
    load = os.getloadavg()[0]
    print(f"\n{ns.boxes} boxes, {ns.rounds} rounds x {ns.runs} runs (median of all rounds); "
          f"{os.cpu_count()} cores, load average {load:.1f}; count_scale {COUNT_SCALE:g}")
    print(f"\nA. update only: {ns.length:,} synthetic values per box, no training")
    print("   CKKS: encryption inside the round, in parallel by the box processes;")
    print("   CKKS pre: every update encrypted by the boxes before the aggregator starts")
    _table(res["plain"], [("CKKS", res["ckks"]), ("CKKS pre", res["ckks_pre"])])
    if not ns.no_train:
        print(f"\nB. full round, {CONV14.key}: real local training ({ns.train_people} LFW "
              f"people per box, {ns.train_budget:g} s budget, edge.training.trainer in the box "
              f"process), then the update of {res['plain_train']['length']:,} trained values")
        _table(res["plain_train"], [("CKKS", res["ckks_train"])])
        if "ckks_default" in res:
            print(f"\nC. full round, default part {default.key}: the same training, then "
                  f"the update of {res['plain_default']['length']:,} trained values")
            _table(res["plain_default"], [("CKKS", res["ckks_default"])])
        print("\nper federated part, full round (median): round time CKKS vs plaintext, "
              "bytes sent per box per round")
        for key, plain_arm, enc_arm in [(CONV14.key, "plain_train", "ckks_train"),
                                        (default.key, "plain_default", "ckks_default")]:
            if enc_arm in res:
                e, b = res[enc_arm], res[plain_arm]
                print(f"  {key:12} {e['length']:>9,} values: round {e['round_s']:.2f} s vs "
                      f"{b['round_s']:.2f} s ({e['round_s'] / b['round_s']:.2f}x); upload "
                      f"{e['upload_bytes']:,.0f} B vs {b['upload_bytes']:,.0f} B per box "
                      "per round")
    for name, r in res.items():
        print(f"rounds (s) {name}: {r['rounds_s']}")
    error = res["ckks"]["max_abs_error"]
    print(f"CKKS result vs plain weighted average: max abs error {error:.2e}")
    checks = [("update only, CKKS", res["ckks"], res["plain"]),
              ("update only, CKKS pre", res["ckks_pre"], res["plain"])]
    if not ns.no_train:
        checks.append((f"full round with training, {CONV14.key}, CKKS", res["ckks_train"],
                       res["plain_train"]))
        if "ckks_default" in res:
            checks.append((f"full round with training, {default.key}, CKKS",
                           res["ckks_default"], res["plain_default"]))
    print_comparisons("bench.federation.he_overhead", [
        comparison(f"round wall time, {label}",
                   Measured.of("encrypted", enc["round_runs"], "rounds"),
                   Measured.of("plaintext", plain["round_runs"], "rounds"), "s", at_most=2.0)
        for label, enc, plain in checks])

if __name__ == "__main__":
    main()
