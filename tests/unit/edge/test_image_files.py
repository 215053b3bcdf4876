"""The box's one rule for which files are images (edge.vision.image_files): by content,
never by name; every file passed over comes back with its reason (issue 17)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edge.vision.image_files import images_in, scan, why_not_an_image
from edge.vision.pipeline import read_image


def test_grey_pgm_and_extension_less_gif_are_images_and_decode(tmp_path: Path,
                                                                lfw_dir: Path) -> None:
    photo = cv2.imread(str(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg"))
    cv2.imwrite(str(tmp_path / "s1.pgm"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    Image.fromarray(photo[:, :, ::-1]).save(tmp_path / "subject01", format="GIF")
    Image.fromarray(photo[:, :, ::-1]).save(tmp_path / "shot.tga", format="TGA")  # Pillow only
    for name in ("s1.pgm", "subject01", "shot.tga"):
        assert why_not_an_image(tmp_path / name) is None, name
        assert read_image(tmp_path / name).shape == (250, 250, 3), name
    assert images_in(tmp_path) == sorted(tmp_path / n for n in ("s1.pgm", "shot.tga",
                                                               "subject01"))


def test_non_images_are_skipped_with_a_reason_whatever_their_name(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_text("not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: not looked at
    sub = tmp_path / "deeper"
    sub.mkdir()
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    (sub / "frame").write_bytes(buf.tobytes())
    found = scan([tmp_path, tmp_path / "missing.jpg"])
    assert found.images == [sub / "frame"]
    reasons = dict(found.skipped)
    assert set(reasons) == {tmp_path / "photo.jpg", tmp_path / "empty.png",
                            tmp_path / "missing.jpg"}
    assert "is not an image" in reasons[tmp_path / "photo.jpg"]
    assert reasons[tmp_path / "empty.png"] == "empty file"
    assert "does not exist" in reasons[tmp_path / "missing.jpg"]
    assert scan([tmp_path], recursive=False).images == []
