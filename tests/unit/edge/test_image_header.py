"""Image sizes read from the header before decoding, and the name rule: real images
encoded by OpenCV in every format read, a real PNG bomb, and the CLI's paths."""

from __future__ import annotations

import io
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.rig.kiosk import png_bomb
from edge.errors import ImageReadError
from edge.gallery.names import NameRejected, check_name
from edge.vision.image_header import (
    ImageTooLarge,
    check_header,
    decode_image,
    read_header,
)
from edge.vision.pipeline import read_image


def high_water() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def encoded(ext: str, width: int, height: int, *params: int) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return buf.tobytes()


@pytest.mark.parametrize(("ext", "params", "fmt"), [
    (".png", (), "PNG"),
    (".jpg", (), "JPEG"),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "WebP"),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),  # lossless: VP8L
    (".bmp", (), "BMP"),
    (".tiff", (), "TIFF"),
])
def test_header_size_matches_what_opencv_decodes(ext: str, params: tuple[int, ...],
                                                 fmt: str) -> None:
    for width, height in ((37, 23), (640, 481)):
        data = encoded(ext, width, height, *params)
        header = read_header(data)
        assert header is not None, ext
        assert (header.format, header.width, header.height) == (fmt, width, height)
        assert decode_image(data).shape == (height, width, 3)


def test_jpeg_with_exif_thumbnail_reads_the_frame_not_the_thumbnail(lfw_dir: Path) -> None:
    photo = sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[0].read_bytes()
    thumb = encoded(".jpg", 16, 12)
    app1 = b"Exif\x00\x00" + thumb  # a thumbnail's own SOF inside APP1: skipped by length
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    data = photo[:2] + segment + photo[2:]
    header = read_header(data)
    assert header is not None and (header.width, header.height) == (250, 250)


def test_png_bomb_is_refused_from_its_header_without_decoding() -> None:
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 3_000_000
    # it is a valid PNG: its deflate stream inflates (checked on a small one)
    small = png_bomb(300, 200)
    idat = small[small.index(b"IDAT") + 4:small.index(b"IEND") - 8]
    assert zlib.decompress(idat) == bytes(200 * (1 + 3 * 300))
    assert decode_image(small).shape == (200, 300, 3)
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    before = high_water()
    started = time.monotonic()
    with pytest.raises(ImageTooLarge, match=r"30000x30000 pixels \(900 MP\), more than the "
                       r"40 MP allowed") as refused:
        decode_image(bomb, source="bomb.png")
    assert time.monotonic() - started < 1.0
    assert refused.value.header.pixels == 900_000_000
    assert high_water() - before < 100 * 2**20


def test_cap_boundary_and_other_formats_opencv_would_decode() -> None:
    data = encoded(".png", 100, 50)
    assert check_header(data, max_pixels=5000).pixels == 5000
    with pytest.raises(ImageTooLarge):
        check_header(data, max_pixels=4999)
    for other in (".ppm", ".pgm", ".ras"):  # PNM read here, Sun raster by Pillow (issue 17)
        pixels = np.zeros((9, 8) if other == ".pgm" else (9, 8, 3), np.uint8)
        ok, buf = cv2.imencode(other, pixels)
        assert ok, other
        assert (check_header(buf.tobytes()).width, check_header(buf.tobytes()).height) == (8, 9)
        with pytest.raises(ImageTooLarge):
            check_header(buf.tobytes(), max_pixels=71)
    with pytest.raises(ImageReadError, match="is not an image"):
        check_header(b"just some text, no image format at all")
    # a format only Pillow reads, past the size Pillow refuses to open: too large, not
    # "not an image" (TGA: width and height are the uint16s at bytes 12-15)
    tga = io.BytesIO()
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tga, format="TGA")
    huge = bytearray(tga.getvalue())
    huge[12:16] = (65535).to_bytes(2, "little") * 2
    with pytest.raises(ImageTooLarge, match=r"\(4295 MP\), more than the 40 MP allowed"):
        check_header(bytes(huge))
    for damaged in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"RIFF\x00\x00\x00\x00WEBP"):
        assert read_header(damaged) is None
    zero = bytearray(data)
    zero[16:20] = bytes(4)  # IHDR width 0
    with pytest.raises(ImageReadError, match="0x50"):
        check_header(bytes(zero))


def test_a_cut_short_jpeg_is_said_to_be(tmp_path: Path, lfw_dir: Path) -> None:
    # helper-58: a cut-short photo was "not an image OpenCV can decode (the file may be
    # truncated ...)" beside libjpeg's own "Premature end of JPEG file"; it is now said
    whole = sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[0]
    data = whole.read_bytes()
    thumb = encoded(".jpg", 16, 12)  # a whole thumbnail's end marker before the main scan
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    for photo in (data, with_thumb):
        assert decode_image(photo).shape == (250, 250, 3)  # whole: read
        for cut in (len(photo) - 2, len(photo) * 9 // 10, len(photo) // 3):
            path = tmp_path / "cut.jpg"
            path.write_bytes(photo[:cut])
            with pytest.raises(ImageReadError) as info:
                read_image(path)
            assert str(path) in str(info.value)
            assert info.value.hint.startswith("the JPEG file is cut short (no end marker)")
    other = tmp_path / "garbage.jpg"  # not a cut-short JPEG: the general hint
    other.write_bytes(encoded(".png", 32, 32)[:60])
    with pytest.raises(ImageReadError) as info:
        read_image(other)
    assert "cut short" not in info.value.hint


def test_cli_read_image_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20000, 20000))
    with pytest.raises(ImageTooLarge, match="400 MP"):
        read_image(path)
    small = tmp_path / "small.png"
    small.write_bytes(png_bomb(64, 48))
    assert read_image(small).shape == (48, 64, 3)


@pytest.mark.parametrize("bad", [
    "Ada\u202eevil", "Ada\u202aX", "Ada\u2066X\u2069", "Ada\u200e", "Ada\u200f",
    "Ada\u061c", "Ada\x00", "Ada\tLovelace", "Ada\nLovelace", "Ada\x1b[31m", "Ada\x7f",
    "Ada\x85", "Ada\x9b", "Ada\u2028Lovelace",
])
def test_control_and_bidi_characters_are_refused_by_name(bad: str) -> None:
    with pytest.raises(NameRejected, match=r"The name contains .*U\+[0-9A-F]{4}"):
        check_name(bad)


def test_good_names_are_kept_as_typed() -> None:
    assert check_name("  Ada   Lovelace ") == "Ada Lovelace"
    assert check_name("محمد علي") == "محمد علي"  # right-to-left script: fine on its own
    assert check_name("Zoë O'Brien-Łukasz") == "Zoë O'Brien-Łukasz"
    with pytest.raises(NameRejected, match="Enter the person's name"):
        check_name("   ")
    with pytest.raises(NameRejected, match="too long"):
        check_name("x" * 65)
