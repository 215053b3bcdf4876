"""A generated kiosk video (bench.common.kiosk_video) written as a real video file."""

from __future__ import annotations

from pathlib import Path

import cv2

from bench.common.kiosk_video import KioskVideo


def write_video(video: KioskVideo, path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), video.fps,
                             (640, 480))
    assert writer.isOpened()
    for frame in video.frames():
        writer.write(frame)
    writer.release()
    return path
