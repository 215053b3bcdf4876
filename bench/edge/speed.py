"""Per-frame latency of the edge pipeline vs the naive OpenCV path, one and two cores.

    .venv/bin/python -m bench.edge.speed [--lfw DIR] [--frames 60] [--repeats 3]

Frames: 640x480, one LFW face (250x250) pasted at a random place on a noisy grey
canvas. Stages: detect (YuNet), align (5-point similarity warp), embed (SFace), match
(cosine against a 1,000-vector gallery; random unit vectors, values do not change the
cost). Baselines, measured in the same run on the same frames:
  naive     cv2.FaceDetectorYN at frame size + FaceRecognizerSF.alignCrop + .feature,
            as in OpenCV's sample;
  naive@320 the same with the frame downscaled to 320 px like ours, to separate the two
            gains.
The one-core run pins the process with os.sched_setaffinity and uses 1 thread in OpenCV
and ONNX Runtime; the two-core run uses 2. Each configuration runs ``--repeats`` times,
interleaved; the table shows medians over repeats of each repeat's p50/p99. "cpu p50" is
the CPU time of the calling thread per frame: in the one-core run all work happens on
that thread, so it is the latency the frame would have on an idle core, robust to other
processes sharing the machine (on the two-thread run it only counts the caller's share).

What gets the pipeline under 25 ms on one core (naive about 32-42 ms):
  1. detector at 320 px on the long side instead of 640x480 (22 -> ~5 ms), accuracy
     kept (LFW in 640x480 frames, 2 folds: 99.75% at 320 px vs 99.42% at full size);
  2. SFace graph: weights moved out of graph inputs (ORT can constant-fold and fuse
     Conv+BN: 37 -> 30 ms), then each PRelu rewritten as BatchNorm/Relu/Add so ORT keeps
     the whole trunk in its NCHWc layout (30 -> ~13.5 ms; ORT's PRelu kernel alone took
     18 ms). Outputs equal the shipped model's within ~1e-6.
Tried and rejected: int8 static quantisation (QDQ, per-channel, opset 13, calibrated on
200 LFW faces outside pairs.txt) ran at 46-50 ms vs 22 ms for the float graph in the same
run (the PRelus stay float, so every layer pays Quantize/Dequantize), and its weights
could no longer be hot-swapped by name as float initializers. Float32 is the default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from bench.common.peak_rss import PeakRss, peak_rss
from bench.rig.compare import Measured, comparison, print_comparisons
from edge.vision.align import align_face
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder
from edge.vision.pipeline import read_image
from models.registry import model_path, optimised_sface_path

FRAME_W, FRAME_H = 640, 480
GALLERY_SIZE = 1000


def make_frames(lfw_dir: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """640x480 frames with one LFW face each, on a noisy grey background."""
    rng = np.random.default_rng(seed)
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())
    chosen = rng.choice(len(people), size=count, replace=False)
    frames = []
    for index in chosen:
        image = read_image(sorted(people[index].glob("*.jpg"))[0])
        frame = rng.normal(110, 12, (FRAME_H, FRAME_W, 3)).clip(0, 255).astype(np.uint8)
        y = int(rng.integers(0, FRAME_H - image.shape[0]))
        x = int(rng.integers(0, FRAME_W - image.shape[1]))
        frame[y : y + image.shape[0], x : x + image.shape[1]] = image
        frames.append(frame)
    return frames


def make_gallery(size: int = GALLERY_SIZE, seed: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(size, 128)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def match(gallery: np.ndarray, embedding: np.ndarray) -> tuple[int, float]:
    scores = gallery @ embedding
    best = int(np.argmax(scores))
    return best, float(scores[best])


StageTimes = dict[str, list[float]]


def run_ours(
    frames: Sequence[np.ndarray], detector: FaceDetector, embedder: Embedder, gallery: np.ndarray
) -> StageTimes:
    times: StageTimes = {k: [] for k in ("detect", "align", "embed", "match", "total", "cpu")}
    for frame in frames:
        c0, t0 = time.thread_time(), time.perf_counter()
        faces = detector.detect(frame)
        t1 = time.perf_counter()
        crops = [align_face(frame, f.landmarks) for f in faces]
        t2 = time.perf_counter()
        embeddings = embedder.embed(crops)
        t3 = time.perf_counter()
        for embedding in embeddings:
            match(gallery, embedding)
        t4, c4 = time.perf_counter(), time.thread_time()
        stages = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, c4 - c0)
        for key, value in zip(times, stages, strict=True):
            times[key].append(value)
    return times


def run_naive(
    frames: Sequence[np.ndarray],
    yunet: cv2.FaceDetectorYN,
    sface: cv2.FaceRecognizerSF,
    gallery: np.ndarray,
    scale: float = 1.0,
) -> StageTimes:
    times: StageTimes = {k: [] for k in ("detect", "align", "embed", "match", "total", "cpu")}
    for frame in frames:
        c0, t0 = time.thread_time(), time.perf_counter()
        image = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale)
        yunet.setInputSize((image.shape[1], image.shape[0]))
        _, raw = yunet.detect(image)
        t1 = time.perf_counter()
        crops = []
        for row in raw if raw is not None else []:
            row = row.copy()
            row[:14] /= scale
            crops.append(sface.alignCrop(frame, row))
        t2 = time.perf_counter()
        features = [sface.feature(c).ravel() for c in crops]
        t3 = time.perf_counter()
        for feature in features:
            match(gallery, feature / np.linalg.norm(feature))
        t4, c4 = time.perf_counter(), time.thread_time()
        stages = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, c4 - c0)
        for key, value in zip(times, stages, strict=True):
            times[key].append(value)
    return times


def percentile_ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def summarise(repeats: list[StageTimes]) -> dict[str, float]:
    """Medians over repeats of per-repeat p50 (every stage) and p99 / fps (total)."""
    out = {
        stage: statistics.median(percentile_ms(r[stage], 50) for r in repeats)
        for stage in repeats[0]
    }
    out["p99"] = statistics.median(percentile_ms(r["total"], 99) for r in repeats)
    out["fps"] = statistics.median(len(r["total"]) / sum(r["total"]) for r in repeats)
    return out


def measure(
    threads: int, frames: list[np.ndarray], repeats: int, cpus: set[int]
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Per path: the table row, and each repeat's p50 (the runs behind the medians)."""
    os.sched_setaffinity(0, cpus)
    cv2.setNumThreads(threads)
    gallery = make_gallery()
    yunet_file, sface_file = model_path("yunet"), model_path("sface")
    detector = FaceDetector(yunet_file)  # max_side 320 (the default)
    embedder = Embedder(optimised_sface_path(), threads=threads)
    yunet = cv2.FaceDetectorYN.create(str(yunet_file), "", (FRAME_W, FRAME_H), 0.8, 0.3, 5000)
    sface = cv2.FaceRecognizerSF.create(str(sface_file), "")
    configs: dict[str, Callable[[], StageTimes]] = {
        "naive": lambda: run_naive(frames, yunet, sface, gallery),
        "naive@320": lambda: run_naive(frames, yunet, sface, gallery, scale=0.5),
        "fedface": lambda: run_ours(frames, detector, embedder, gallery),
    }
    for run in configs.values():
        run()  # warm-up pass: first calls allocate buffers and pick kernels
    results: dict[str, list[StageTimes]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, run in configs.items():  # interleaved, so drift hits all configs alike
            results[name].append(run())
    p50s = {name: [percentile_ms(r["total"], 50) for r in runs] for name, runs in results.items()}
    return {name: summarise(runs) for name, runs in results.items()}, p50s


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'path':<10} {'detect':>7} {'align':>6} {'embed':>6} {'match':>6} "
          f"{'p50':>7} {'p99':>7} {'fps':>6} {'cpu p50':>8}  (ms)")  # fmt: skip
    for name, row in table.items():
        print(
            f"{name:<10} {row['detect']:7.2f} {row['align']:6.2f} {row['embed']:6.2f} "
            f"{row['match']:6.2f} {row['total']:7.2f} {row['p99']:7.2f} {row['fps']:6.1f} "
            f"{row['cpu']:8.2f}"
        )
    ours, naive = table["fedface"]["total"], table["naive"]["total"]
    print(f"p50 speed-up vs naive: {naive / ours:.2f}x; vs naive@320: "
          f"{table['naive@320']['total'] / ours:.2f}x")  # fmt: skip


def speed_ups(title: str, p50s: dict[str, list[float]]) -> list[str]:
    """fedface's per-frame p50 next to each naive path's, measured interleaved with it."""
    ours = Measured.of("fedface", p50s["fedface"], "repeats")
    return [comparison(f"{title}, per-frame p50", ours, Measured.of(name, p50s[name], "repeats"),
                       "ms") for name in ("naive", "naive@320")]


# The child for the memory figure: the inference path alone, on 60 frames.
_RSS_CHILD = """
import sys
from pathlib import Path
from bench.edge.speed import make_frames
from edge.vision.pipeline import FacePipeline
pipeline = FacePipeline.from_model_dir(threads=1)
for frame in make_frames(Path(sys.argv[1]), 60):
    pipeline.process(frame)
assert 'torch' not in sys.modules
"""


def pipeline_peak_rss(lfw_dir: Path) -> PeakRss:
    """Peak RSS of a fresh process that builds the pipeline and runs 60 frames."""
    return peak_rss([sys.executable, "-c", _RSS_CHILD, str(lfw_dir)], timeout=300)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_lfw = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
    parser.add_argument(
        "--lfw", type=Path, default=Path(os.environ.get("FEDFACE_LFW", default_lfw))
    )
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rss = pipeline_peak_rss(args.lfw)
    status = "ok" if rss.returncode == 0 else f"child failed with code {rss.returncode}"
    print(f"peak RSS of detect+align+embed process (no torch): {rss.peak_mib:.0f} MiB ({status})")
    all_cpus = set(os.sched_getaffinity(0))
    frames = make_frames(args.lfw, args.frames)
    print(f"{len(frames)} frames 640x480, one LFW face each; {args.repeats} repeats; "
          f"gallery {GALLERY_SIZE}; CPUs available: {sorted(all_cpus)}")  # fmt: skip
    one_core, p50s = measure(1, frames, args.repeats, {min(all_cpus)})
    print_table("one core (pinned with sched_setaffinity, 1 thread)", one_core)
    lines = speed_ups("one core", p50s)
    if len(all_cpus) >= 2:
        two, two_p50s = measure(2, frames, args.repeats, set(sorted(all_cpus)[:2]))
        print_table("two cores (2 threads)", two)
        lines += speed_ups("two cores", two_p50s)
    target, cpu = one_core["fedface"]["total"], one_core["fedface"]["cpu"]
    print(f"\none-core p50 {target:.1f} ms per frame wall, {cpu:.1f} ms CPU (target <= 25 ms): "
          f"{'met' if target <= 25 else 'NOT met'} on wall time")  # fmt: skip
    print_comparisons("bench.edge.speed", lines)


if __name__ == "__main__":
    main()
