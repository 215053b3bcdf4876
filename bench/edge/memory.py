"""Peak memory of ``fedface-edge run`` on 640x480 frames, and proof torch stays out of it.

Builds a folder of 640x480 frames from LFW photos, enrols a few people in a temporary
box, then runs ``fedface-edge run --source dir:FRAMES?loop=1 --max-frames N`` several
times while polling its RSS with psutil (plus the kernel's ru_maxrss at exit) and reading
/proc/<pid>/maps for a loaded libtorch. Baselines measured in the same run: a bare
Python that imports cv2 + onnxruntime, and one that imports torch (what the inference
path saves by never importing it). Target: <= 400 MB.

    .venv/bin/python -m bench.edge.memory [--lfw DIR] [--frames 150] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil

from bench.common.lfw import default_lfw_dir
from bench.rig import compare

TARGET_MIB = 400.0
HEAVY_LIBRARIES = ("libtorch", "libc10", "/torch/")
PEOPLE = ("Colin_Powell", "Tony_Blair", "Hugo_Chavez", "Gerhard_Schroeder")


@dataclass(frozen=True)
class Measured:
    peak_mib: float
    torch_mapped: bool
    returncode: int
    seconds: float
    debug_modules_line: str


def make_frames(lfw_dir: Path, folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photos = [p for person in PEOPLE for p in sorted((lfw_dir / person).glob("*.jpg"))[3:13]]
    rng = np.random.default_rng(0)
    for i in range(count):
        frame = np.full((480, 640, 3), 90, np.uint8)
        image = cv2.imread(str(photos[i % len(photos)]))
        if image is None:
            raise SystemExit(f"cannot read {photos[i % len(photos)]}")
        x, y = int(rng.integers(0, 390)), int(rng.integers(0, 230))
        frame[y:y + 250, x:x + 250] = image
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame)


def enrol(lfw_dir: Path, people_root: Path, env: dict[str, str]) -> None:
    for person in PEOPLE:
        (people_root / person).mkdir(parents=True)
        for photo in sorted((lfw_dir / person).glob("*.jpg"))[:3]:
            (people_root / person / photo.name).write_bytes(photo.read_bytes())
    subprocess.run([sys.executable, "-m", "edge.cli", "enroll", "--from-dir", str(people_root)],
                   env=env, check=True, capture_output=True)


def measure(cmd: Sequence[str], env: dict[str, str], interval: float = 0.02) -> Measured:
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    torch_mapped = False
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break  # exited, still a zombie: wait4 below reads its exact ru_maxrss
        try:
            peak = max(peak, watched.memory_info().rss)
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            torch_mapped |= any(lib in maps for lib in HEAVY_LIBRARIES)
        except (psutil.Error, OSError):
            pass
        time.sleep(interval)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(peak, int(usage.ru_maxrss) * 1024)  # Linux: kilobytes
    line = next((ln for ln in stderr.splitlines() if "heavy modules loaded" in ln), "")
    return Measured(peak / 2**20, torch_mapped, proc.returncode, time.monotonic() - started,
                    line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fedface-mem-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "FEDFACE_DATA_DIR": str(root / "box")}
        make_frames(args.lfw, root / "frames", 60)
        enrol(args.lfw, root / "people", env)
        run_cmd = [sys.executable, "-m", "edge.cli", "-vv", "run", "--source",
                   f"dir:{root / 'frames'}?loop=1", "--max-frames", str(args.frames),
                   "--events", str(root / "events.jsonl")]
        runs = [measure(run_cmd, env) for _ in range(args.runs)]
        bare = measure([sys.executable, "-c", "import cv2, onnxruntime, numpy"], env)
        with_torch = measure([sys.executable, "-c", "import torch, cv2, onnxruntime"], env)
        events = sum(1 for _ in (root / "events.jsonl").open())

    failed = [r for r in runs if r.returncode != 0]
    if failed:
        raise SystemExit(f"fedface-edge run failed with exit code {failed[0].returncode}")
    peaks = [r.peak_mib for r in runs]
    median = statistics.median(peaks)
    print(f"fedface-edge run, {args.frames} frames of 640x480, {len(PEOPLE)} people enrolled, "
          f"{events} events over {args.runs} runs")
    print(f"  peak RSS per run: {', '.join(f'{p:.0f}' for p in peaks)} MiB; median "
          f"{median:.0f} MiB (target <= {TARGET_MIB:.0f} MiB: "
          f"{'OK' if median <= TARGET_MIB else 'OVER'})")
    print(f"  run time per run: {', '.join(f'{r.seconds:.1f}' for r in runs)} s")
    print(f"  baseline python + cv2 + onnxruntime imported: {bare.peak_mib:.0f} MiB; "
          f"+ torch imported: {with_torch.peak_mib:.0f} MiB "
          f"(torch libraries mapped: {with_torch.torch_mapped})")
    compare.print_comparisons("bench.edge.memory", [compare.comparison(
        "peak RSS", compare.Measured.of("fedface-edge run", peaks), compare.Measured.of(
            f"python + {label} imported", [m.peak_mib]), "MiB", "{:.0f}")
        for label, m in (("cv2 + onnxruntime", bare), ("torch + cv2 + onnxruntime", with_torch))])
    mapped = any(r.torch_mapped for r in runs)
    print(f"  torch libraries mapped in fedface-edge run: {mapped}")
    print(f"  its own report: {runs[0].debug_modules_line.split(': ', 1)[-1]}")
    if mapped or "none" not in runs[0].debug_modules_line:
        raise SystemExit("torch (or another heavy framework) was loaded by fedface-edge run")
    if median > TARGET_MIB:
        raise SystemExit(f"peak RSS {median:.0f} MiB is over the {TARGET_MIB:.0f} MiB target")


if __name__ == "__main__":
    main()
