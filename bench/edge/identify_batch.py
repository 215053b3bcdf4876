"""``fedface-edge identify FOLDER`` against ``run --source dir:FOLDER`` on the same photos.

    .venv/bin/python -m bench.edge.identify_batch [--lfw DIR] [--images 370] [--repeats 3]

Issue 17: identifying 370 probes one process per photo took 20.9 minutes; ``run
--source dir:`` took 11.9 s on them. Here both commands run as real processes (start,
model loading and all) on one folder of ``--images`` LFW photos (the first photo of
each person in name order), with 20 people enrolled; the two alternate, ``--repeats``
times each. Target: identify's wall time within 20% of run's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common.lfw import default_lfw_dir
from bench.rig.compare import Measured, comparison, print_comparisons
from bench.rig.procs import tmpdir

ENROLLED = 20
EXIT_INPUT = 3  # identify's code when some photo had no face: still a full run


def edge_cli(data_dir: Path, *args: str, ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of one ``fedface-edge`` process."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         timeout=1800, check=False)
    seconds = time.perf_counter() - started
    if out.returncode not in ok:
        raise RuntimeError(f"fedface-edge {args[0]} exited {out.returncode}: {out.stderr[-2000:]}")
    return seconds


def prepare(lfw_dir: Path, work: Path, images: int) -> tuple[Path, Path]:
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())
    probes = work / "probes"
    probes.mkdir(parents=True)
    for person in people[:images]:
        shutil.copy(sorted(person.glob("*.jpg"))[0], probes)
    enrol = work / "enrol"
    for person in [p for p in people if len(list(p.glob("*.jpg"))) >= 3][:ENROLLED]:
        (enrol / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[1:3]:
            shutil.copy(photo, enrol / person.name)
    data_dir = work / "box"
    edge_cli(data_dir, "enroll", "--from-dir", str(enrol))
    return data_dir, probes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--images", type=int, default=370)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args(argv)
    work = tmpdir("bench-identify-")
    try:
        data_dir, probes = prepare(ns.lfw, work, ns.images)
        count = len(list(probes.iterdir()))
        identify, run = [], []
        for repeat in range(ns.repeats):
            identify.append(edge_cli(data_dir, "identify", "--json", str(probes),
                                     ok=(0, EXIT_INPUT)))
            run.append(edge_cli(data_dir, "run", "--source", f"dir:{probes}", "--events",
                                str(work / "events.jsonl")))
            print(f"repeat {repeat + 1}: identify {identify[-1]:.1f} s, run {run[-1]:.1f} s "
                  f"({count} photos)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_comparisons("bench.edge.identify_batch", [comparison(
        f"wall time on {count} photos, one process each", Measured.of("identify", identify),
        Measured.of("run --source dir:", run), "s", "{:.1f}", within=0.20, paired=True)])


if __name__ == "__main__":
    main()
