"""The image bytes of a request: a multipart field, or base64 in a JSON body.

Multipart bodies are split here rather than by Werkzeug's form parser: that parser
compiles a regular expression for every request's boundary (about 3 ms of a 640x480
recognise, issue 17's bench) and spools files through temporary objects, where an API
request carries one or two small images that are wanted as bytes. The body was capped
by ``MAX_CONTENT_LENGTH`` before it is read (Werkzeug answers 413 past it). RFC 7578: a
part is ``--boundary CRLF headers CRLF CRLF content CRLF``; the boundary never occurs in
a part's content.
"""

from __future__ import annotations

import base64
import binascii
import re

from flask import g, request

from edge.errors import ImageReadError

_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)


def multipart_parts(body: bytes, boundary: str) -> dict[str, bytes]:
    """Field name -> content of each part of a multipart/form-data body (first wins)."""
    parts: dict[str, bytes] = {}
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            continue
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-disposition:"):
                found = _NAME.search(line.split(b":", 1)[1])
                if found:
                    parts.setdefault(found.group(1).decode("utf-8", "replace"), content)
    return parts


def _parts() -> dict[str, bytes]:
    if "multipart_parts" not in g:
        boundary = request.mimetype_params.get("boundary", "")
        g.multipart_parts = (multipart_parts(request.get_data(cache=False), boundary)
                             if request.mimetype == "multipart/form-data" and boundary else {})
    parts: dict[str, bytes] = g.multipart_parts
    return parts


def upload(field: str = "file") -> bytes:
    """The bytes of the image in ``field`` (``ImageReadError`` if there is none)."""
    parts = _parts()
    if field in parts:
        return parts[field]
    if request.is_json:
        body = request.get_json(silent=True) or {}
        raw = body.get(field) if isinstance(body, dict) else None
        if isinstance(raw, str):
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise ImageReadError(f"{field} is not valid base64", "") from None
    raise ImageReadError(f"no image: send it as multipart field {field!r}", "")
