"""The Flask routes of the CompreFace-compatible API (paths as ``compreface-sdk`` calls them).

Every request needs an ``x-api-key`` header naming a key of ``edge.api.keys``; a wrong
or missing key is 401, and an address sending many is slowed (429). Uploads are capped
in bytes (``MAX_CONTENT_LENGTH``: 413) and in pixels (read from the header before
decoding: ``edge.vision.image_header``). Nothing that identifies a face is logged: no
subject names, no image data, no request URLs (their query carries subject names).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from edge.api import compreface as cf
from edge.api.faces import FaceService
from edge.api.keys import ApiKeys
from edge.api.limits import TokenBuckets
from edge.api.uploads import upload
from edge.errors import ImageReadError, NoFaceError
from edge.gallery.names import NameRejected
from edge.gallery.store import UnknownPersonError
from edge.gallery.subjects import SubjectExistsError
from edge.serving.recognizer import NotThePerson
from edge.vision.image_header import ImageTooLarge

EXTENSION = "fedface_api"
RECOGNITION = "/api/v1/recognition"


@dataclass
class ApiServices:
    faces: FaceService
    keys: ApiKeys
    per_key: TokenBuckets  # requests of a valid key
    bad_keys: TokenBuckets  # requests with a missing or wrong key, per address
    max_upload_bytes: int


def _svc() -> ApiServices:
    found = current_app.extensions[EXTENSION]
    assert isinstance(found, ApiServices)
    return found


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


def _fail(message: str, code: int, status: int = 400) -> Response:
    return _json(cf.error(message, code), status)


def _start_clock() -> None:
    g.started = time.perf_counter()


def _server_timing(response: Response) -> Response:
    """``Server-Timing``: the request's time in this process, and the engine's and the
    image decoding's shares (a client or a bench tells the HTTP transport's cost from
    the server's)."""
    total = (time.perf_counter() - g.get("started", time.perf_counter())) * 1e3
    parts = [f"app;dur={total:.1f}"]
    if "engine_ms" in g:
        parts.append(f"engine;dur={g.engine_ms:.1f}")
    if "decode_ms" in g:
        parts.append(f"decode;dur={g.decode_ms:.1f}")
    response.headers["Server-Timing"] = ", ".join(parts)
    return response


def _check_key() -> Response | None:
    svc = _svc()
    key = request.headers.get("x-api-key", "")
    service = svc.keys.service_of(key) if key else None
    if service is None:
        address = request.remote_addr or "?"
        if not svc.bad_keys.allow(address):
            return _slow_down("too many requests with a wrong API key", svc.bad_keys, address)
        return _fail("missing or unknown x-api-key header", cf.CODE_API_KEY, 401)
    if not svc.per_key.allow(service):
        return _slow_down("rate limit exceeded for this API key", svc.per_key, service)
    return None


def _slow_down(message: str, buckets: TokenBuckets, who: str) -> Response:
    """429 with when to try again (helper-58: a client had to guess)."""
    response = _fail(message, cf.CODE_RATE, 429)
    response.headers["Retry-After"] = str(buckets.retry_after(who))
    return response


def _image(field: str = "file") -> Any:
    data = upload(field)
    if not data:
        raise ImageReadError(f"{field} is empty", "")
    started = time.perf_counter()
    bgr = _svc().faces.decode(data, field)
    g.decode_ms = g.get("decode_ms", 0.0) + (time.perf_counter() - started) * 1e3
    return bgr


def recognize() -> Response:
    options = cf.find_options(request.args.to_dict())
    image = _image()
    started = time.perf_counter()
    faces, timing = _svc().faces.find(image, **options)
    g.engine_ms = (time.perf_counter() - started) * 1e3
    if not faces:
        raise NoFaceError("No face is found in the given image", "")
    return _json(cf.recognition(faces, timing, cf.Extras.of(request.args.to_dict())))


def detect() -> Response:
    options = cf.find_options(request.args.to_dict())
    faces, timing = _svc().faces.find(_image(), prediction_count=0,
                                      det_prob_threshold=options["det_prob_threshold"],
                                      limit=options["limit"])
    if not faces:
        raise NoFaceError("No face is found in the given image", "")
    return _json(cf.detection(faces, timing, cf.Extras.of(request.args.to_dict())))


def verify_images() -> Response:
    faces = _svc().faces
    extras = cf.Extras.of(request.args.to_dict())
    source = faces.largest(_image("source_image"))
    targets, _ = faces.find(_image("target_image"), prediction_count=0)
    if not targets:
        raise NoFaceError("No face is found in the given image", "")
    matches = [{**cf.face(t, extras),
                "similarity": cf.similarity(float(t.embedding @ source.embedding))}
               for t in targets]
    return _json({"result": [{
        "source_image_face": cf.face(source, extras),
        "face_matches": sorted(matches, key=lambda m: -m["similarity"]),
    }]})


def subjects() -> Response:
    subject_store = _svc().faces.subjects
    if request.method == "GET":
        return _json({"subjects": subject_store.names()})
    if request.method == "DELETE":
        return _json({"deleted": subject_store.remove_all()})
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("subject"), str):
        return _fail('send JSON {"subject": "name"}', cf.CODE_BAD_REQUEST)
    return _json({"subject": subject_store.add(body["subject"])}, 201)


def subject(name: str) -> Response:
    subject_store = _svc().faces.subjects
    if request.method == "DELETE":
        subject_store.gallery.remove_person(name)  # its face examples go with it
        return _json({"subject": name})
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("subject"), str):
        return _fail('send JSON {"subject": "new name"}', cf.CODE_BAD_REQUEST)
    _svc().faces.rename(name, body["subject"])  # a merge only of one person's faces
    return _json({"updated": True})


def faces() -> Response:
    svc = _svc()
    name = request.args.get("subject") or None
    if request.method == "POST":
        if name is None:
            return _fail("the subject query parameter is required", cf.CODE_BAD_REQUEST)
        image_id, warnings = svc.faces.enrol(name, _image(), "the upload")
        # "warnings" beside CompreFace's two fields (its clients read only those)
        return _json({"image_id": str(image_id), "subject": name, "warnings": warnings},
                     201)
    if request.method == "DELETE":
        if name is None:
            return _fail("the subject query parameter is required", cf.CODE_BAD_REQUEST)
        return _json({"deleted": svc.faces.subjects.remove_faces_of(name)})
    rows = svc.faces.subjects.faces(name)
    size = int(cf.number(request.args.to_dict(), "size", max(len(rows), 1), 1))
    page = int(cf.number(request.args.to_dict(), "page", 0, 0))
    return _json({"faces": [{"image_id": str(i), "subject": s}
                            for i, s in rows[page * size:(page + 1) * size]],
                  "page_number": page, "page_size": size,
                  "total_pages": -(-len(rows) // size), "total_elements": len(rows)})


def _image_id(raw: str) -> int:
    if not raw.isdigit():
        raise UnknownPersonError(f"face example {raw!r} not found")
    return int(raw)


def face(image_id: str) -> Response:
    crop_id, name = _svc().faces.subjects.remove_face(_image_id(image_id))
    return _json({"image_id": str(crop_id), "subject": name})


def verify_face(image_id: str) -> Response:
    svc = _svc()
    options = cf.find_options(request.args.to_dict())
    try:
        vector, _ = svc.faces.example_vector(_image_id(image_id))
    except KeyError:
        raise UnknownPersonError(f"face example {image_id!r} not found") from None
    found, _ = svc.faces.find(_image(), prediction_count=0,
                              det_prob_threshold=options["det_prob_threshold"],
                              limit=options["limit"])
    if not found:
        raise NoFaceError("No face is found in the given image", "")
    extras = cf.Extras.of(request.args.to_dict())
    return _json({"result": [{**cf.face(f, extras),
                              "similarity": cf.similarity(float(f.embedding @ vector))}
                             for f in found]})


def _errors(app: Flask) -> None:
    def handler(status: int, code: int) -> Callable[[Exception], Response]:
        return lambda exc: _fail(str(exc).split("\n")[0], code, status)

    app.register_error_handler(ImageTooLarge, handler(413, cf.CODE_TOO_LARGE))
    app.register_error_handler(NoFaceError, handler(400, cf.CODE_NO_FACE))
    app.register_error_handler(ImageReadError, handler(400, cf.CODE_BAD_REQUEST))
    app.register_error_handler(cf.OptionError, handler(400, cf.CODE_BAD_REQUEST))
    app.register_error_handler(NameRejected, handler(400, cf.CODE_BAD_REQUEST))
    app.register_error_handler(SubjectExistsError, handler(400, cf.CODE_BAD_REQUEST))
    app.register_error_handler(NotThePerson, handler(400, cf.CODE_BAD_REQUEST))
    app.register_error_handler(UnknownPersonError, handler(404, cf.CODE_NOT_FOUND))

    def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = _svc().max_upload_bytes / 2**20
            return _fail(f"the upload is over {limit:g} MB", cf.CODE_TOO_LARGE, 413)
        return _fail(exc.description or exc.name, cf.CODE_BAD_REQUEST, exc.code or 500)

    app.register_error_handler(HTTPException, http_error)


def create_api(services: ApiServices) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=services.max_upload_bytes,
                      MAX_FORM_MEMORY_SIZE=services.max_upload_bytes)
    app.extensions[EXTENSION] = services
    app.before_request(_start_clock)
    app.before_request(_check_key)
    app.after_request(_server_timing)
    routes: list[tuple[str, Callable[..., Response], list[str]]] = [
        (f"{RECOGNITION}/recognize", recognize, ["POST"]),
        ("/api/v1/detection/detect", detect, ["POST"]),
        ("/api/v1/verification/verify", verify_images, ["POST"]),
        (f"{RECOGNITION}/subjects", subjects, ["GET", "POST", "DELETE"]),
        (f"{RECOGNITION}/subjects/<path:name>", subject, ["PUT", "DELETE"]),
        (f"{RECOGNITION}/faces", faces, ["GET", "POST", "DELETE"]),
        (f"{RECOGNITION}/faces/<image_id>", face, ["DELETE"]),
        (f"{RECOGNITION}/faces/<image_id>/verify", verify_face, ["POST"]),
    ]
    for rule, view, methods in routes:
        app.add_url_rule(rule, view.__name__, view, methods=methods)
    _errors(app)
    return app
