"""The recognition API's own multipart splitting (edge.api.uploads) on bodies encoded by
the clients that send them: urllib3 (requests) and requests-toolbelt (compreface-sdk)."""

from __future__ import annotations

import os

from requests_toolbelt.multipart.encoder import MultipartEncoder
from urllib3.filepost import encode_multipart_formdata

from edge.api.uploads import multipart_parts


def test_parts_of_bodies_from_both_clients_come_back_byte_exact() -> None:
    source = os.urandom(5000) + b"\r\n--not-the-boundary\r\n\r\n" + os.urandom(100)
    target = b"\r\n" + os.urandom(3000) + b"\r\n"
    body, content_type = encode_multipart_formdata(
        {"source_image": ("a.jpg", source), "target_image": ("b.jpg", target),
         "note": "x"})
    parts = multipart_parts(body, content_type.split("boundary=")[1])
    assert parts == {"source_image": source, "target_image": target, "note": b"x"}
    encoder = MultipartEncoder(fields={"file": ("name=\"trick\".jpg", source)})
    parts = multipart_parts(encoder.to_string(), encoder.boundary_value)
    assert parts == {"file": source}


def test_a_body_without_parts_or_with_another_boundary_gives_nothing() -> None:
    body, content_type = encode_multipart_formdata({"file": ("a.jpg", b"abc")})
    assert multipart_parts(body, "some-other-boundary") == {}
    assert multipart_parts(b"", content_type.split("boundary=")[1]) == {}
