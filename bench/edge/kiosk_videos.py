"""Write the generated kiosk videos to files, to try `run` or the kiosk without a camera.

    .venv/bin/python -m bench.edge.kiosk_videos --out videos/ [--lfw DIR] [--seed 0]

Writes ``videos/<scenario>.avi`` (MJPG, 640x480 at 30 fps, the scenarios of
``bench.common.kiosk_video``: LFW people walking up to a kiosk, crossing, three at once,
passers-by, someone taking another's place) and ``videos/<scenario>.json`` (the ground
truth: each visit's person, whether enrolled, first and last frame), then prints the
`enroll` commands for the scenarios' enrolled people (photo 1 each; the videos show later
photos). A video file is timed on its own clock; ``file:...?live=1`` plays it to a kiosk
in real time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import cv2

from bench.common.kiosk_video import FRAME_H, FRAME_W, kiosk_videos
from bench.common.lfw import default_lfw_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the videos")
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--seed", type=int, default=0, help="which people (one set per seed)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    videos = kiosk_videos(args.lfw, seed=args.seed, seconds=args.seconds)
    for video in videos:
        path = args.out / f"{video.name}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), video.fps,
                                 (FRAME_W, FRAME_H))
        if not writer.isOpened():
            raise SystemExit(f"cannot write {path}")
        for frame in video.frames():
            writer.write(frame)
        writer.release()
        truth = [{"visit": v.visit, "person": v.person, "enrolled": v.enrolled,
                  "first_frame": v.first_frame, "last_frame": v.last_frame}
                 for v in video.visits]
        (args.out / f"{video.name}.json").write_text(json.dumps(
            {"video": path.name, "fps": video.fps, "frames": video.length, "visits": truth},
            indent=2) + "\n")
        print(f"{path}: {video.length} frames, {len(video.visits)} visits")
    print("enrol the enrolled visitors (their photo 1; the videos show later ones):")
    for person in sorted({p for v in videos for p in v.enrolled_people()}):
        print(f"  fedface-edge enroll {person} {args.lfw / person / f'{person}_0001.jpg'}")


if __name__ == "__main__":
    main()
