"""Hot swap under a live stream: dropped frames, mixed-model frames, latency, swap time.

    .venv/bin/python -m bench.edge.hot_swap --lfw ../shared/data/lfw [--people 1000] [--swaps 20]
        [--runs 3] [--part embed_bn|conv14|fc1_lora]

A camera thread offers 640x480 frames (one LFW face) into a bounded queue (4 frames, a
capture buffer) at a camera's rate (``--fps``, default 30, capped at 80% of the
throughput measured without swaps so a healthy engine keeps up on a slower box); a
frame that finds the queue full is DROPPED and counted. The frame thread recognises
every queued frame through the engine. The main thread applies ``--swaps`` federated
results (small real perturbations of the pretrained weights of ``--part``, default
``models.federated_parts.DEFAULT_PART``) with ``--people`` enrolled. Reported per run,
then as medians over ``--runs`` runs (the machine is shared: one run can be unlucky):

- dropped frames, during swaps and in the no-swap windows (the latter measure the
  machine's noise, not the swap), and frames whose probe and gallery vectors came from
  different models (``FrameResult.consistent``; must be 0);
- p50/p99 frame latency (queue wait excluded) on frames that overlapped a swap, next to
  the same on frames of the no-swap windows before and after (target p99 <= 1.5x);
- time from weights received to serving per swap (median, max; target <= 1 s), with
  its steps (the last, ``old_dropped``, is cleanup after serving and not counted).

The enrolled box is built once under ``--workdir`` (enrolment + trunk-feature cache take
minutes) and reused by later runs.
"""

from __future__ import annotations

import argparse
import logging
import queue
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench.rig.compare import Measured, comparison, print_comparisons
from edge.gallery.store import DB_FILENAME, Gallery
from edge.serving.hot_swap import HotSwapper
from edge.serving.recognizer import Recognizer
from edge.serving.swap_steps import SwapReport
from edge.vision.pipeline import FacePipeline
from models.federated_parts import DEFAULT_PART, FederatedPart, get_part
from models.registry import optimised_sface_path

log = logging.getLogger("bench.edge.hot_swap")


def build_box(lfw: Path, workdir: Path, people: int, multi: int, part: FederatedPart) -> Path:
    box = workdir / f"box-{people}-{multi}"
    if (box / f"ready-{part.cut}").exists():
        return box
    if (box / "ready").exists():  # enrolled already: only this part's trunk features
        swapper = open_box(box, part)
        print(f"  trunk features at {part.cut}: {swapper.assets.warm()} computed")
        swapper.engine.close()
        (box / f"ready-{part.cut}").write_text("ok")
        return box
    shutil.rmtree(box, ignore_errors=True)
    folders = sorted(p for p in lfw.iterdir() if p.is_dir())
    multi_folders = [p for p in folders if len(list(p.glob("*.jpg"))) >= 2][:multi]
    single = [p for p in folders if p not in set(multi_folders)][:people - len(multi_folders)]
    pipeline = FacePipeline.from_model_dir(threads=2)
    t0 = time.perf_counter()
    with Gallery.open(box) as gallery:
        recognizer = Recognizer(pipeline, gallery, 0.40)
        for i, person in enumerate([*multi_folders, *single]):
            images = sorted(person.glob("*.jpg"))[:2 if person in multi_folders else 1]
            recognizer.enroll_images(person.name, images)
            if i % 100 == 0:
                print(f"  enrolled {i}/{people} people ({time.perf_counter() - t0:.0f} s)")
        recognizer.engine.close()
    swapper = open_box(box, part)
    print(f"  trunk features at {part.cut}: {swapper.assets.warm()} computed")
    swapper.engine.close()
    (box / "ready").write_text("ok")
    (box / f"ready-{part.cut}").write_text("ok")
    return box


def open_box(box: Path, part: FederatedPart, detector: object = None) -> HotSwapper:
    return HotSwapper(optimised_sface_path(), part, box / "models",
                      box / DB_FILENAME, detector=detector, threads=1)  # type: ignore[arg-type]


def test_frame(lfw: Path) -> np.ndarray:
    person = next(p for p in sorted(lfw.iterdir()) if len(list(p.glob("*.jpg"))) >= 5)
    face = cv2.imread(str(sorted(person.glob("*.jpg"))[4]))
    if face is None or face.shape != (250, 250, 3):
        raise SystemExit(f"{person} does not hold 250x250 LFW images")
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[115:365, 195:445] = face
    return frame


@dataclass
class Stream:
    swapper: HotSwapper
    frame: np.ndarray
    fps: float
    queue: queue.Queue[float] = field(default_factory=lambda: queue.Queue(maxsize=4))
    offered: int = 0
    dropped: int = 0
    drop_times: list[float] = field(default_factory=list)
    processed: int = 0
    mixed: int = 0
    frames: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, model
    stop: threading.Event = field(default_factory=threading.Event)

    def camera(self) -> None:
        period = 1.0 / self.fps
        next_at = time.perf_counter()
        while not self.stop.is_set():
            self.offered += 1
            try:
                self.queue.put_nowait(time.perf_counter())
            except queue.Full:
                self.dropped += 1
                self.drop_times.append(time.perf_counter())
            next_at += period
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def recognise(self) -> None:
        while not self.stop.is_set() or not self.queue.empty():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            start = time.perf_counter()
            result = self.swapper.engine.recognise(self.frame)
            end = time.perf_counter()
            self.processed += 1
            self.mixed += 0 if result.consistent else 1
            self.frames.append((start, end, result.model_version))


def max_throughput(swapper: HotSwapper, frame: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        swapper.engine.recognise(frame)
        n += 1
    return n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1e3, q)) if values else float("nan")


@dataclass
class RunResult:
    dropped_swapping: int
    dropped_calm: int
    mixed: int
    p99_calm: float
    p99_swapping: float
    serving_seconds: list[float]

    @property
    def ratio(self) -> float:
        return self.p99_swapping / self.p99_calm


def run(args: argparse.Namespace) -> None:
    part = get_part(args.part)
    box = build_box(args.lfw, args.workdir, args.people, args.multi, part)
    pipeline = FacePipeline.from_model_dir(threads=1)
    swapper = open_box(box, part, detector=pipeline.detector)
    swapper.niceness = args.niceness
    swapper.assets.warm()
    counts = swapper.rows.crops() if swapper.rows else []
    print(f"box: {args.people} people, {len(counts)} crops, part {part.key} ({part.size:,} "
          f"values, cut {part.cut}), serving {swapper.engine.state.model_version}")
    frame = test_frame(args.lfw)
    throughput = max_throughput(swapper, frame, 5.0)
    fps = min(args.fps, 0.8 * throughput)
    print(f"engine alone: {throughput:.1f} frames/s; camera at {fps:.1f} fps")
    rng = np.random.default_rng(args.seed)
    results = [stream_and_swap(swapper, frame, fps, args, rng, k) for k in range(args.runs)]
    swapper.engine.close()
    print(f"\nover {args.runs} runs (medians): dropped during swaps "
          f"{[r.dropped_swapping for r in results]}, in no-swap windows "
          f"{[r.dropped_calm for r in results]}; mixed-model frames "
          f"{sum(r.mixed for r in results)}")
    serving = [s for r in results for s in r.serving_seconds]
    print(f"weights received -> serving over {len(serving)} swaps: median "
          f"{statistics.median(serving):.2f} s, p90 {np.percentile(serving, 90):.2f} s, "
          f"max {max(serving):.2f} s (target <= 1 s)")
    print_comparisons("bench.edge.hot_swap", [comparison(
        "frame latency p99", Measured.of("during swaps", [r.p99_swapping for r in results]),
        Measured.of("without swaps", [r.p99_calm for r in results]), "ms", "{:.1f}",
        at_most=1.5, paired=True)])


def stream_and_swap(swapper: HotSwapper, frame: np.ndarray, fps: float,
                    args: argparse.Namespace, rng: np.random.Generator, k: int) -> RunResult:
    print(f"\n--- run {k + 1}/{args.runs}")
    stream = Stream(swapper, frame, fps)
    threads = [threading.Thread(target=stream.camera), threading.Thread(target=stream.recognise)]
    for t in threads:
        t.start()
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    windows: list[tuple[float, float]] = []
    reports: list[SwapReport] = []
    time.sleep(args.quiet)  # no-swap window before
    quiet_before = (time.perf_counter() - args.quiet, time.perf_counter())
    for i in range(args.swaps):
        vector = (base * (1 + 1e-2 * rng.standard_normal(base.shape))).astype(np.float32)
        start = time.perf_counter()
        swapper.apply(f"bench-{int(time.time())}-{k}-{i}", vector)
        windows.append((start, time.perf_counter()))
        assert swapper.last_report is not None
        reports.append(swapper.last_report)
        time.sleep(args.gap)
    quiet_after_start = time.perf_counter()
    time.sleep(args.quiet)  # no-swap window after
    stream.stop.set()
    for t in threads:
        t.join()
    return report(stream, windows, [quiet_before, (quiet_after_start, time.perf_counter())],
                  reports)


def report(stream: Stream, windows: list[tuple[float, float]],
           quiet: list[tuple[float, float]], reports: list[SwapReport]) -> RunResult:
    def overlaps(s: float, e: float, spans: list[tuple[float, float]]) -> bool:
        return any(s < b and e > a for a, b in spans)

    during = [e - s for s, e, _ in stream.frames if overlaps(s, e, windows)]
    calm = [e - s for s, e, _ in stream.frames if overlaps(s, e, quiet)
            and not overlaps(s, e, windows)]
    swap_drops = sum(1 for t in stream.drop_times if any(a <= t <= b for a, b in windows))
    calm_drops = sum(1 for t in stream.drop_times if any(a <= t <= b for a, b in quiet))
    print(f"offered {stream.offered}, processed {stream.processed}, DROPPED {stream.dropped} "
          f"({swap_drops} during swaps, {calm_drops} in the no-swap windows), mixed-model "
          f"frames {stream.mixed}")
    print(f"frame latency without swaps: p50 {pct(calm, 50):.1f} ms, p99 {pct(calm, 99):.1f} "
          f"ms ({len(calm)} frames)")
    print(f"frame latency during swaps:  p50 {pct(during, 50):.1f} ms, p99 {pct(during, 99):.1f}"
          f" ms ({len(during)} frames); p99 ratio {pct(during, 99) / pct(calm, 99):.2f}x")
    serving = [r.serving_after for r in reports]
    print(f"received -> serving over {len(reports)} swaps: median {statistics.median(serving):.2f}"
          f" s, min {min(serving):.2f} s, max {max(serving):.2f} s")
    steps = list(reports[0].seconds)
    medians = {s: statistics.median(r.seconds[s] for r in reports) for s in steps}
    prev = 0.0
    parts = []
    for s in steps:
        parts.append(f"{s} {1e3 * (medians[s] - prev):.0f}")
        prev = medians[s]
    print("median ms per step: " + ", ".join(parts))
    canary = reports[-1].canary
    if canary is not None:
        print(f"canary: {canary.reason} ({canary.probes} probes)")
    return RunResult(swap_drops, calm_drops, stream.mixed, pct(calm, 99), pct(during, 99),
                     serving)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fedface-bench-hot-swap"))
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--multi", type=int, default=100, help="people with 2 crops")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--fps", type=float, default=30.0,
                        help="camera rate (capped at 80%% of the engine's throughput)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between swaps")
    parser.add_argument("--quiet", type=float, default=8.0, help="no-swap windows (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--niceness", type=int, default=10, help="of the swap thread")
    parser.add_argument("--part", default=DEFAULT_PART, help="federated part swapped")
    logging.basicConfig(level=logging.WARNING)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
