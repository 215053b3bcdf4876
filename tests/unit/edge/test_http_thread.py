"""edge.http_thread over real sockets: keep-alive, and bodies a handler did not read."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from flask import Flask, Response, request

from edge.http_thread import HttpThread

CAP = 64 * 1024


@pytest.fixture()
def server() -> Iterator[HttpThread]:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = CAP

    @app.post("/echo")
    def echo() -> Response:
        if request.headers.get("x-api-key") != "right":
            return Response("no key", 401)  # answered before the body is read
        return Response(str(len(request.get_data())), 200)

    thread = HttpThread("test")
    thread.listen("127.0.0.1", 0, app)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def _connection(thread: HttpThread) -> http.client.HTTPConnection:
    host, port = thread.url().removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=30)


def _post(conn: http.client.HTTPConnection, body: bytes, key: str) -> tuple[int, str, str]:
    conn.request("POST", "/echo", body=body, headers={"x-api-key": key})
    answer = conn.getresponse()
    return answer.status, answer.read().decode(), answer.getheader("Connection") or ""


def test_one_connection_carries_many_requests_even_after_an_unread_body(
        server: HttpThread) -> None:
    conn = _connection(server)
    try:
        assert _post(conn, b"a" * 1000, "right") == (200, "1000", "")
        first = conn.sock
        # a refused request leaves its body unread: the next request must not read it
        # as its own request line
        assert _post(conn, b"b" * 5000, "wrong") == (401, "no key", "")
        assert _post(conn, b"c" * 10, "right") == (200, "10", "")
        assert conn.sock is first  # no reconnection in between
    finally:
        conn.close()


def test_an_upload_over_the_cap_is_413_and_closes(server: HttpThread) -> None:
    conn = _connection(server)
    try:
        status, _, connection = _post(conn, b"x" * (CAP + 1), "right")
        assert (status, connection.lower()) == (413, "close")
    finally:
        conn.close()
    # far past the cap, the server refuses on the header alone: nothing of the body sent
    conn = _connection(server)
    try:
        conn.putrequest("POST", "/echo")
        conn.putheader("x-api-key", "wrong")
        conn.putheader("Content-Length", str(10**10))
        conn.endheaders()
        answer = conn.getresponse()
        assert (answer.status, (answer.getheader("Connection") or "").lower()) == (413, "close")
    finally:
        conn.close()


def test_the_servers_own_413_carries_the_apps_answer() -> None:
    """Far past the cap the server answers on the header alone; with ``too_large`` in the
    app's shape (the recognition API's JSON: a CompreFace client failed to parse Cheroot's
    plain text on a 20 MB upload)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = CAP
    thread = HttpThread("test")
    thread.listen("127.0.0.1", 0, app, too_large=("application/json",
                                                  b'{"message": "too big", "code": 5}'))
    thread.start()
    conn = _connection(thread)
    try:
        conn.putrequest("POST", "/echo")
        conn.putheader("Content-Length", str(10**10))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413 and answer.getheader("Content-Type") == "application/json"
        assert answer.read() == b'{"message": "too big", "code": 5}'
        assert (answer.getheader("Connection") or "").lower() == "close"
    finally:
        conn.close()
        thread.stop()
