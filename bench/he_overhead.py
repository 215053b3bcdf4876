"""Round wall time, CKKS-encrypted vs plaintext FedAvg, same transport, same run.

    .venv/bin/python -m bench.he_overhead [--length 1000000] [--boxes 3] [--rounds 3]

Both modes: a real Mosquitto started here on a free port, the aggregator service in its
own process (same spooling, persistence with fsync, signing and chunking), one process
per box. Round time = announce(r) seen -> model/latest(r) seen by one watcher client,
INCLUDING box-side preparation (encryption for CKKS, scaling for plaintext), done in
parallel by the box processes (all on this machine's cores, shared with the aggregator
and the broker). Plaintext = raw float32 [c*n*w, c*n] blobs, numpy sum at the aggregator.
Median over rounds; bytes on the wire per box per round (upload) and the result size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

import numpy as np

from bench.aggregator_common import (
    RoundWatcher,
    box_vector,
    last_json,
    make_federation,
    spawn,
    start_mosquitto,
    stop,
    tmpdir,
    wait_ready,
)


def run_mode(
    mode: str, length: int, n_boxes: int, rounds: int, chunk: int, precompute: bool = False
) -> dict[str, Any]:
    root = tmpdir(f"he-{mode}-")
    broker, url = start_mosquitto(root / "mosquitto")
    fed = make_federation(root, n_boxes)
    watcher = RoundWatcher(url)
    common = ["--broker", url, "--rounds", str(rounds), "--length", str(length),
              "--chunk-size", str(chunk)]
    boxes = [spawn("box", *common, "--devices", dev, "--keys", str(fed.key_dir),
                   "--secret", str(fed.secret_path), "--mode", mode,
                   *(["--precompute"] if precompute else [])) for dev in fed.devices]
    for b in boxes:
        wait_ready(b)
    agg = spawn("agg", *common, "--state", str(fed.state), "--mode", mode,
                "--quorum", str(n_boxes))
    try:
        times = [watcher.wait_published(r, 900) for r in range(1, rounds + 1)]
        reports = [last_json(stop(b, 120)[0]) for b in boxes]
        agg_out, _ = stop(agg, 60)
        assert all(r["accepted"] for r in reports), reports
        upload = statistics.median(
            v for r in reports for v in r["upload_bytes"].values()
        )
        prepare = statistics.median(r["prepare_s"] for r in reports)
        error = float("nan")
        if mode == "ckks":  # sanity: the last result decrypts to the plain weighted average
            from federation.keys import load_secret_context
            from federation.packing import (
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
            "round_s": statistics.median(times),
            "rounds_s": times,
            "prepare_s": prepare,
            "upload_bytes": upload,
            "result_bytes": watcher.result_bytes[rounds],
            "agg_peak_rss_mb": last_json(agg_out)["peak_rss_mb"],
            "max_abs_error": error,
        }
    finally:
        watcher.close()
        for p in [*boxes, agg]:
            if p.poll() is None:
                p.kill()
        broker.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1_000_000)
    p.add_argument("--boxes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    ns = p.parse_args()
    results: dict[str, dict[str, Any]] = {}
    variants = [("plain", "plain", False), ("ckks", "ckks", False), ("ckks_pre", "ckks", True)]
    for name, mode, precompute in variants:
        print(f"running {name}: {ns.boxes} boxes x {ns.length:,} params x {ns.rounds} rounds...",
              file=sys.stderr, flush=True)
        results[name] = run_mode(mode, ns.length, ns.boxes, ns.rounds, ns.chunk_size, precompute)
    plain, ckks, pre = results["plain"], results["ckks"], results["ckks_pre"]
    load = os.getloadavg()[0]
    print(f"\n{ns.boxes} boxes, {ns.length:,} parameters, {ns.rounds} rounds each (median); "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    print("CKKS: encryption inside the round, in parallel by the box processes;")
    print("CKKS pre: every update encrypted by the boxes before the aggregator starts")
    print(f"{'':26}{'plaintext':>11}{'CKKS':>9}{'ratio':>8}{'CKKS pre':>10}{'ratio':>8}")
    rows = [("round wall time (s)", "round_s", "{:.2f}"),
            ("box prepare in round (s)", "prepare_s", "{:.2f}"),
            ("upload per box (MB)", "upload_bytes", "{:.1f}"),
            ("result download (MB)", "result_bytes", "{:.1f}"),
            ("aggregator peak RSS (MB)", "agg_peak_rss_mb", "{:.0f}")]
    for label, key, fmt in rows:
        scale = 1e6 if "bytes" in key else 1.0
        a, b, c = plain[key] / scale, ckks[key] / scale, pre[key] / scale
        print(f"{label:26}{fmt.format(a):>11}{fmt.format(b):>9}{b / a:>7.1f}x"
              f"{fmt.format(c):>10}{c / a:>7.1f}x")
    for name, res in results.items():
        print(f"rounds (s) {name}: {[round(t, 2) for t in res['rounds_s']]}")
    print(f"CKKS result vs plain weighted average: max abs error {ckks['max_abs_error']:.2e}")
    for name, res in (("CKKS", ckks), ("CKKS pre", pre)):
        ratio = res["round_s"] / plain["round_s"]
        verdict = "MET" if ratio <= 2 else "NOT MET"
        print(f"target encrypted <= 2x plaintext, {name}: {verdict} ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
