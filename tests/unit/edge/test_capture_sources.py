"""Frame sources on real files: an image folder, an MJPG video of LFW faces, a live
source that loses its file and gets it back, and URIs that must be refused clearly."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.capture import FolderSource, VideoCaptureSource, open_source
from edge.vision.frame_source import Backoff, SourceError

PEOPLE = ("Colin_Powell", "Tony_Blair")


def lfw_images(lfw_dir: Path, count: int) -> list[Path]:
    files: list[Path] = []
    for person in PEOPLE:
        files += sorted((lfw_dir / person).glob("*.jpg"))[: count // len(PEOPLE) + 1]
    return files[:count]


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return np.asarray(image)


def write_video(path: Path, images: list[Path], fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (250, 250))
    assert writer.isOpened()
    for image in images:
        writer.write(read(image))
    writer.release()


@pytest.fixture
def frame_folder(tmp_path: Path, lfw_dir: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, src in enumerate(lfw_images(lfw_dir, 4)):
        (folder / f"{i:03d}.jpg").write_bytes(src.read_bytes())
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_folder_source_plays_images_in_name_order(frame_folder: Path) -> None:
    expected = [read(p) for p in sorted(frame_folder.glob("*.jpg"))]
    with open_source(f"dir:{frame_folder}") as source:
        frames = list(source)
    assert [f.frame_index for f in frames] == [0, 1, 2, 3]
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected, strict=True))
    assert frames[0].timestamp <= frames[-1].timestamp
    # a bare directory path is a folder source too
    assert isinstance(open_source(str(frame_folder)), FolderSource)


def test_folder_source_loops_paces_and_skips_unreadable(frame_folder: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    (frame_folder / "002.jpg").write_bytes(b"not a jpeg")
    source = open_source(f"dir:{frame_folder}?fps=20&loop=1")
    started = time.monotonic()
    with source:
        frames = [f for _, f in zip(range(7), source, strict=False)]
    elapsed = time.monotonic() - started
    assert len(frames) == 7  # 3 readable images, looped
    assert np.array_equal(frames[0].image, frames[3].image)
    # skipped once, when the folder is listed (issue 17: by content, named with why)
    assert source.stats.skipped == 2  # 002.jpg and notes.txt
    assert "002.jpg: it is not an image" in caplog.text
    assert elapsed >= 6 / 20 * 0.9  # paced at 20 fps


def test_video_file_source_reads_every_frame(tmp_path: Path, lfw_dir: Path) -> None:
    images = lfw_images(lfw_dir, 6)
    video = tmp_path / "clip.avi"
    write_video(video, images)
    with open_source(str(video)) as source:
        frames = list(source)
    assert len(frames) == 6
    assert frames[0].image.shape == (250, 250, 3)
    # MJPG is lossy: frames are close to, not equal to, the source images
    first = read(images[0]).astype(np.int16)
    assert np.abs(frames[0].image.astype(np.int16) - first).mean() < 8
    assert isinstance(source, VideoCaptureSource) and not source.live
    # stamped on the recording's clock (10 fps: 0.1 s apart), not on how fast it was read
    # (a walkthrough's 32 s clip read in 6.6 s gave a 4 s visit "duration_s": 0.855)
    gaps = np.diff([f.timestamp for f in frames])
    assert np.allclose(gaps, 0.1), gaps
    assert abs(frames[0].timestamp - time.time()) < 60


def test_a_video_file_replayed_live_comes_in_real_time(tmp_path: Path, lfw_dir: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """`?live=1` replays a file as a camera: at its frame rate, and on from its start,
    each loop quietly (helper-61: a warning at every loop of a 10 s clip)."""
    caplog.set_level(logging.INFO)
    video = tmp_path / "camera.avi"
    write_video(video, lfw_images(lfw_dir, 4), fps=20.0)
    started = time.monotonic()
    stamps = []
    with open_source(f"file:{video}?live=1") as source:
        for frame in source:
            stamps.append(frame.timestamp)
            if frame.frame_index == 9:  # past the end of the 4-frame file, twice
                break
    elapsed = time.monotonic() - started
    assert elapsed >= 9 / 20.0 - 0.01, elapsed  # nine frame intervals of 50 ms
    assert np.allclose(np.diff(stamps), 0.05)
    assert source.stats.reconnects >= 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_live_source_reconnects_when_its_file_comes_back(tmp_path: Path, lfw_dir: Path) -> None:
    video = tmp_path / "camera.avi"
    write_video(video, lfw_images(lfw_dir, 3))
    hidden = tmp_path / "camera.avi.away"
    backoff = Backoff(initial_delay=0.05, max_delay=0.2, max_attempts=40)
    source = open_source(f"file:{video}?live=1", backoff=backoff)
    restorer: threading.Timer | None = None
    indices = []
    with source:
        for frame in source:
            indices.append(frame.frame_index)
            if frame.frame_index == 0:
                # the "camera" disappears: the open capture still plays what it has, then
                # every reopening fails until the file is back
                video.rename(hidden)
                restorer = threading.Timer(0.4, hidden.rename, args=(video,))
                restorer.start()
            if frame.frame_index == 5:
                break
    assert restorer is not None
    restorer.join()
    assert indices == [0, 1, 2, 3, 4, 5]
    assert source.stats.reconnects == 1
    assert source.stats.failed_attempts >= 1


def test_live_source_gives_up_after_bounded_attempts(tmp_path: Path, lfw_dir: Path) -> None:
    video = tmp_path / "camera.avi"
    write_video(video, lfw_images(lfw_dir, 2))
    source = open_source(f"file:{video}?live=1",
                         backoff=Backoff(initial_delay=0.01, max_delay=0.02, max_attempts=3))
    with source, pytest.raises(SourceError, match="3 reconnect attempts failed"):
        for frame in source:
            if frame.frame_index == 0:
                video.unlink()
    assert source.stats.failed_attempts == 3


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("foo://camera/1", "unknown scheme 'foo'"),
        ("", "empty source URI"),
        ("no_such_thing", "no such file, directory or device"),
        ("dir:/nonexistent/frames", "is not a directory"),
        ("/nonexistent/clip.mp4", "does not exist"),
        ("/dev/video99", "does not exist"),
        ("rtsp://127.0.0.1:9/stream", "cannot be opened"),
    ],
)
def test_bad_uris_raise_source_error_naming_the_uri(uri: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        open_source(uri).open()
    assert reason in str(caught.value)
    assert repr(uri) in str(caught.value)


def test_bad_folder_options_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="fps='fast' is not a number"):
        open_source(f"dir:{tmp_path}?fps=fast")
    with pytest.raises(SourceError, match="unknown option"):
        open_source(f"dir:{tmp_path}?speed=2")
    with pytest.raises(SourceError, match="no images"):
        open_source(f"dir:{tmp_path}").open()
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"no images .*skipped bad\.jpg: it is not an image"), \
            open_source(str(tmp_path)) as s:
        list(s)
