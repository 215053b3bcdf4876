"""``fedface-edge bench``: a quick speed self-test on this box's own hardware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_INPUT, CliError

if TYPE_CHECKING:
    import numpy as np

FRAME_W, FRAME_H = 640, 480
WARMUP_FRAMES = 3  # first runs allocate ORT arenas and pick kernels: not representative


def synthetic_frames(faces: list[np.ndarray], count: int, seed: int = 0) -> list[np.ndarray]:
    """640x480 frames: a smooth noisy background with 1-2 faces pasted at ~2x scale.

    Enrolled crops are tightly aligned 112x112 faces; padding them by reflection gives
    the detector the head-and-shoulders context it expects from a camera.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        noise = rng.integers(40, 200, size=(FRAME_H // 8, FRAME_W // 8, 3), dtype=np.uint8)
        frame = cv2.resize(noise, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
        for slot in range(1 + i % 2):
            face = faces[(i + slot) % len(faces)]
            padded = cv2.copyMakeBorder(face, 40, 40, 40, 40, cv2.BORDER_REFLECT)
            side = int(rng.integers(150, 220))
            patch = cv2.resize(padded, (side, side))
            x = int(rng.integers(0, FRAME_W // 2 - side // 2)) + slot * FRAME_W // 2
            x = min(x, FRAME_W - side)
            y = int(rng.integers(0, FRAME_H - side))
            frame[y:y + side, x:x + side] = patch
        frames.append(frame)
    return frames


def _letterboxed(images: list[Path], count: int) -> list[np.ndarray]:
    import cv2
    import numpy as np

    from edge.vision.pipeline import read_image

    frames = []
    for path in images[:count]:
        image = read_image(path)
        scale = min(FRAME_W / image.shape[1], FRAME_H / image.shape[0])
        resized = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
        frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
        frame[:resized.shape[0], :resized.shape[1]] = resized
        frames.append(frame)
    return frames


def bench(
    ctx: typer.Context,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Use the photos of this folder (recursively) as frames instead of "
        "synthetic frames built from the enrolled crops.", show_default=False)] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames to time.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per-stage milliseconds (detect, align, embed, match) on 640x480 frames."""
    import numpy as np

    from edge.vision.image_files import scan

    recognizer = box(ctx).recognizer()
    if images is not None:
        if not images.is_dir():
            raise CliError(f"{images} is not a directory", exit_code=EXIT_INPUT)
        files = scan([images]).images
        if not files:
            raise CliError(f"no images in {images}", exit_code=EXIT_INPUT)
        work = _letterboxed(files, frames + WARMUP_FRAMES)
        origin = f"{len(work)} photos from {images}"
    else:
        crops = [c.image for _, c in zip(range(16), recognizer.gallery.iter_crops(),
                                          strict=False)]
        if not crops:
            raise CliError("nothing to build frames from: the gallery is empty",
                           hint="enrol people first, or pass --images DIR", exit_code=EXIT_INPUT)
        work = synthetic_frames(crops, frames + WARMUP_FRAMES)
        origin = f"synthetic 640x480 frames from {len(crops)} enrolled crops"
    samples: dict[str, list[float]] = {}
    faces = 0
    for i, frame in enumerate(work[:frames + WARMUP_FRAMES]):
        found = recognizer.recognise(frame)
        if i < WARMUP_FRAMES and len(work) > WARMUP_FRAMES:
            continue
        faces += len(found)
        for stage, ms in recognizer.last_timings.as_ms().items():
            samples.setdefault(stage, []).append(ms)
    timed = len(samples.get("total", []))
    summary = {stage: {"median_ms": round(float(np.median(v)), 2),
                       "p90_ms": round(float(np.percentile(v, 90)), 2)}
               for stage, v in samples.items()}
    fps = 1000.0 / summary["total"]["median_ms"] if summary["total"]["median_ms"] > 0 else 0.0
    report = {"frames": timed, "faces": faces, "source": origin,
              "threads": box(ctx).settings.threads, "model_version": recognizer.model_version,
              "stages": summary, "fps_median": round(fps, 1)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{origin}; {timed} frames timed, {faces} faces, "
               f"{report['threads']} thread(s)")
    for stage, figures in summary.items():
        typer.echo(f"  {stage:7s} median {figures['median_ms']:7.2f} ms   "
                   f"p90 {figures['p90_ms']:7.2f} ms")
    typer.echo(f"  => {fps:.1f} frames/s (median)")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
