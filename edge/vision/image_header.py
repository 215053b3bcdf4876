"""An image's format and size read from its header, before anything is decoded.

A compressed image says how big it will be once decoded, and decoding allocates that
much first: a 2.6 MB PNG of 30000x30000 uniform pixels decodes to 2.7 GB (the kiosk
reached 5.56 GB and 43 s on one, issue 15). So every photo that comes from outside (a
kiosk upload, a file given to ``fedface-edge enroll``) has its header read here first,
and is refused when its width x height is over a pixel cap or its format is not one
this module can read (OpenCV would otherwise pick a decoder by content, for formats
whose size is not checked).

Formats read here: PNG (IHDR), JPEG (the first SOFn frame header; APPn segments such as
an EXIF thumbnail are skipped by length), WebP (VP8, VP8L, VP8X), BMP, TIFF (first IFD),
GIF (logical screen) and PNM (PBM/PGM/PPM, as in face sets of grey PGM files). Pure
Python over the first bytes; no decoder runs before the check. Any other format is
asked of Pillow, whose ``Image.open`` reads the header only (issue 17: "anything OpenCV
or Pillow decodes", decided by content, never by the file name).
``decode_image`` is the one way in for such photos: check, then decode with OpenCV
(Pillow for a format OpenCV does not decode).

``DEFAULT_MAX_PIXELS`` (40 MP) is the cap for files given on the command line; the
kiosk has its own setting (``max_upload_pixels``, same default). 40 MP is above any
phone's usual 12 MP photo and the full-size JPEG of most 24-36 MP cameras, and about
the largest photo an 8 MB upload holds as a normal JPEG; decoded it is 120 MB of BGR,
which a 1 GB Raspberry Pi can afford for one photo at a time (the kiosk decodes one
upload at a time).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from edge.errors import ImageReadError

DEFAULT_MAX_PIXELS = 40_000_000
FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF, PGM or another format Pillow reads"

_PNG = b"\x89PNG\r\n\x1a\n"
_OVERSIZED = "Pillow:oversized"  # a header Pillow refused to open: its pixel count only
# SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC): frame headers carrying the size
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field


class ImageTooLarge(ImageReadError):
    """An image whose header says it is over the pixel cap (nothing was decoded)."""

    def __init__(self, message: str, hint: str, header: ImageHeader, max_pixels: int) -> None:
        super().__init__(message, hint)
        self.header = header
        self.max_pixels = max_pixels


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _png(data: bytes) -> ImageHeader | None:
    # the signature, then IHDR must be the first chunk: length 13, width, height
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("PNG", width, height)


def _jpeg(data: bytes) -> ImageHeader | None:
    pos = 2  # after SOI (FF D8)
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not at a marker: damaged, and the decoder would stop here too
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, or SOS (scan data) before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageHeader("JPEG", width, height)
        pos += 2 + length
    return None


def _webp(data: bytes) -> ImageHeader | None:
    chunk, body = data[12:16], data[20:]
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        (bits,) = struct.unpack("<I", body[1:5])
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(body) >= 10:
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return ImageHeader("WebP", width, height)
    return None


def _bmp(data: bytes) -> ImageHeader | None:
    if len(data) < 26:
        return None
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])  # height < 0: top-down rows
    return ImageHeader("BMP", abs(width), abs(height))


def _tiff(data: bytes) -> ImageHeader | None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8 or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None  # BigTIFF (43) and anything else: not read
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    size: dict[int, int] = {}
    for entry in range(min(count, 4096)):
        at = ifd + 2 + 12 * entry
        if at + 12 > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[at:at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            if kind == 3:
                (size[tag],) = struct.unpack(order + "H", data[at + 8:at + 10])
            elif kind == 4:
                (size[tag],) = struct.unpack(order + "I", data[at + 8:at + 12])
            else:
                return None
    if 256 not in size or 257 not in size:
        return None
    return ImageHeader("TIFF", size[256], size[257])


def _gif(data: bytes) -> ImageHeader | None:
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])  # the logical screen
    return ImageHeader("GIF", width, height)


def _pnm(data: bytes) -> ImageHeader | None:
    # "P5 <width> <height> ..." in ASCII, fields split by whitespace, # comments to EOL
    fields: list[int] = []
    text = data[2:512]
    pos = 0
    while len(fields) < 2 and pos < len(text):
        char = text[pos:pos + 1]
        if char == b"#":
            end = text.find(b"\n", pos)
            pos = len(text) if end < 0 else end + 1
        elif char.isspace():
            pos += 1
        elif char.isdigit():
            end = pos
            while end < len(text) and text[end:end + 1].isdigit():
                end += 1
            if end == len(text):
                return None  # a number cut by the end of what was read
            fields.append(int(text[pos:end]))
            pos = end
        else:
            return None
    if len(fields) < 2:
        return None
    return ImageHeader("PNM", fields[0], fields[1])


def _pillow(data: bytes) -> ImageHeader | None:
    """Pillow's reading of the header (no pixel is decoded by ``Image.open``)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return ImageHeader(f"Pillow:{image.format}", width, height)
    except Image.DecompressionBombError as exc:
        # Pillow will not open past twice its MAX_IMAGE_PIXELS (about 178 MP) and says
        # only how many pixels: far over any cap here, so "too large", not "not an image"
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return ImageHeader(_OVERSIZED, int(found.group(1)), 1) if found else None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        return None


def read_header(data: bytes) -> ImageHeader | None:
    """The format and size an image says it has, or None if it is none of ``FORMATS``
    (or its header is damaged). Only the first bytes are read (a few KB for JPEG)."""
    if data.startswith(_PNG):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return _pnm(data)
    return _pillow(data)


def check_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 source: str = "the image") -> ImageHeader:
    """The header of an image safe to decode, else ``ImageReadError`` saying why not:
    not a format read here, a size of zero, or more than ``max_pixels`` pixels."""
    header = read_header(data)
    if header is None:
        raise ImageReadError(f"{source} is not an image this box can decode (its format is "
                             f"none of: {FORMATS}), or its header is damaged",
                             f"use a photo in one of: {FORMATS}")
    if header.width == 0 or header.height == 0:
        raise ImageReadError(f"{source} says it is {header.width}x{header.height} pixels",
                             "the file is damaged; use another photo")
    if header.pixels > max_pixels:
        size = (f"{header.width}x{header.height} pixels " if header.format != _OVERSIZED
                else "") + f"({header.pixels / 1e6:.0f} MP)"
        raise ImageTooLarge(
            f"{source} is {size}, more than the {max_pixels / 1e6:g} MP allowed",
            "scale the photo down (a face needs far fewer pixels) and try again",
            header, max_pixels)
    return header


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 source: str = "the image") -> np.ndarray:
    """A BGR uint8 image from the bytes of a photo from outside, its header checked
    first (``check_header``); ``ImageReadError`` if it cannot be used."""
    import cv2

    header = check_header(data, max_pixels, source)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None and header.format.startswith("Pillow:"):
        image = _pillow_decode(data)
    if image is None or image.ndim != 3:
        # no end marker after the last scan: a cut-short file (a copy stopped half way, a
        # full card), which OpenCV's imdecode refuses (libjpeg says only "Premature end
        # of JPEG file", naming no file)
        cut_short = (header.format == "JPEG"
                     and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"))
        why = "the JPEG file is cut short (no end marker)" if cut_short \
            else "the file may be truncated"
        raise ImageReadError(f"{source} is not an image OpenCV can decode",
                             f"{why}; use a photo in one of: {FORMATS}")
    if image.shape[:2] != (header.height, header.width):
        # the decoder read another size than the header said: a crafted file
        raise ImageReadError(f"{source} decodes to {image.shape[1]}x{image.shape[0]} pixels "
                             f"but says {header.width}x{header.height}",
                             "the file is damaged; use another photo")
    return np.asarray(image)


def _pillow_decode(data: bytes) -> np.ndarray | None:
    """BGR pixels of a format OpenCV does not decode (its size already checked)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])
