"""A WSGI app served by Cheroot's thread-pool HTTP/1.1 server in a background thread.

The kiosk page and the recognition API both serve this way. Cheroot rather than
Werkzeug's development server: Werkzeug's answers every request with ``Connection:
close``, so each request paid a new TCP (and TLS) connection and a new thread, and then
waited out a 10 ms drain of the socket; with keep-alive and a pool of threads that was
most of the recognition API's HTTP overhead (issue 17's bench). Responses leave with
TCP_NODELAY (Cheroot's default): a response's header and body are separate small writes,
and Nagle's algorithm would hold the body until the client's delayed ACK (about 40 ms).

To keep a connection after an early answer (a 401 before the upload was read), the
server reads the rest of the request body; ``BODY_BACKSTOP`` times the app's own upload
cap (``MAX_CONTENT_LENGTH``) bounds that read: past it the server answers 413 itself and
closes, below it the app's own 413 does (a 413 always closes). The server's own 413
carries the app's answer when it gives one (``too_large``: the recognition API's JSON
error; Cheroot's is plain text, which a CompreFace client failed to parse).

May import: nothing of the project.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from cheroot.errors import FatalSSLAlert, socket_errors_to_ignore
from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.wsgi import Server

log = logging.getLogger(__name__)

THREADS = 8  # a screen, a few phones or a few integrations; the engine is one anyway
IDLE_TIMEOUT_S = 10  # an idle keep-alive connection is closed after this
# connections waiting to be accepted, as Werkzeug's (Cheroot's default is 5): a burst of
# new connections past it gets resets (40 parallel log-ins, tests/integration/
# test_kiosk_hardening.py)
LISTEN_QUEUE = 128
BODY_BACKSTOP = 2  # x the app's upload cap, plus a megabyte of multipart framing


class TlsFilesError(ValueError):
    """A TLS certificate or key that cannot be served; the message says which and why."""


def server_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The HTTPS context of ``--tls-cert``/``--tls-key`` (TLS 1.2 or later), None without
    either. The kiosk and the recognition API both take them."""
    if (cert is None) != (key is None):
        raise TlsFilesError("give both --tls-cert and --tls-key, or neither")
    if cert is None or key is None:
        return None
    for path, what in ((cert, "certificate"), (key, "key")):  # which of the two (helper-61)
        if not path.is_file():
            raise TlsFilesError(f"the TLS {what} {path} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        # the reason only: load_cert_chain says a key does not match its certificate as
        # "[X509: KEY_VALUES_MISMATCH]", a missing file as "[Errno 2] ..."
        raise TlsFilesError(f"cannot load the TLS certificate {cert} or key {key}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from exc
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:  # served all the same: the host's own users are the exposure
        log.warning("the TLS key %s is readable by other users (mode %04o): chmod 600 it",
                    key, mode)
    return context


def _server_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    """Cheroot's own lines, into the log: a TLS handshake a browser dropped (a certificate
    it does not trust yet) or plain HTTP sent to the HTTPS port at DEBUG (raw lines with
    client addresses filled the kiosk's log: helper-61); the rest at Cheroot's level."""
    quiet = "during handshake" in msg or "plain HTTP into" in msg
    log.log(logging.DEBUG if quiet else level, "%s", msg,
            exc_info=traceback and not quiet)


class _ContextAdapter(BuiltinSSLAdapter):
    """Cheroot's TLS adapter on an ``ssl.SSLContext`` built by the caller (its own
    constructor wants file names and builds a context of its defaults), which sends a
    browser that came over plain HTTP to the same address over HTTPS."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.certificate = self.private_key = ""
        self.certificate_chain = self.ciphers = self.private_key_password = None
        self._server_env: dict[str, str] = {}
        self.context = context

    def wrap(self, sock: socket.socket) -> Any:
        # Cheroot answers plain HTTP with a 400, but closes with the rest of the request
        # unread, so the client gets a reset instead (staff typing the kiosk's address
        # without https:// saw "connection reset"). A TLS connection starts with a
        # handshake record (0x16); a plain one with a method name.
        try:
            first = sock.recv(8, socket.MSG_PEEK)
        except OSError as exc:
            raise FatalSSLAlert(*exc.args) from exc
        if not _PLAIN_HTTP.match(first):
            return super().wrap(sock)
        try:
            _answer_plain_http(sock)
        finally:
            sock.close()
        raise FatalSSLAlert("a plain HTTP request on the HTTPS port: sent to https://")


_PLAIN_HTTP = re.compile(rb"[A-Z]{3,7} ")  # GET, POST, OPTIONS... and a space
_HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_TARGET = re.compile(r"/[\x21-\x7e]*")  # an origin-form path: no space, no control


def _answer_plain_http(sock: socket.socket) -> None:
    """A redirect to the same host and path over HTTPS (307: method kept, not cached
    for good, so the port may serve plain HTTP again one day), or a 400 saying to use
    https:// when the request does not name its host; then a clean close."""
    sock.settimeout(2.0)
    head = b""
    with suppress(OSError):
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    target = parts[1] if len(parts) == 3 else ""
    host = next((line.split(":", 1)[1].strip() for line in lines[1:]
                 if line.lower().startswith("host:")), "")
    if _HOST.fullmatch(host) and _TARGET.fullmatch(target):
        location = f"https://{host}{target}"
        status, extra = "307 Temporary Redirect", f"Location: {location}\r\n"
        body = f"This server speaks HTTPS only: {location}\n"
    else:
        status, extra = "400 Bad Request", ""
        body = "This server speaks HTTPS only: use https:// in the address.\n"
    answer = (f"HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}")
    with suppress(OSError):
        sock.sendall(answer.encode("latin-1"))
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):  # the rest of the request (a body), so the close sends no reset
            if not sock.recv(65536):
                break


def _connection_class(content_type: str, body: bytes) -> type[HTTPConnection]:
    """Connections whose requests answer the server's own 413 with ``body``."""

    class _Request(HTTPRequest):
        def simple_response(self, status: Any, msg: Any = "") -> None:
            if not str(status).startswith("413"):
                super().simple_response(status, msg)
                return
            self.close_connection = True
            head = (f"{self.server.protocol} {status}\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: {content_type}\r\nConnection: close\r\n\r\n")
            try:
                self.conn.wfile.write(head.encode("ISO-8859-1") + body)
            except OSError as exc:  # the client went: as Cheroot's own answer does
                if exc.args[0] not in socket_errors_to_ignore:
                    raise

    class _Connection(HTTPConnection):
        RequestHandlerClass = _Request

    return _Connection


class HttpThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def listen(self, host: str, port: int, app: Any, tls: ssl.SSLContext | None = None,
               too_large: tuple[str, bytes] | None = None) -> None:
        """Bind (``OSError`` if the address is taken); nothing is served before ``start``.
        ``too_large``: (content type, body) of the server's own 413."""
        server = Server((host, port), app, numthreads=THREADS, server_name=self.name,
                        timeout=IDLE_TIMEOUT_S, request_queue_size=LISTEN_QUEUE)
        cap = getattr(app, "config", {}).get("MAX_CONTENT_LENGTH")
        if cap:
            server.max_request_body_size = BODY_BACKSTOP * cap + 2**20
        if too_large is not None:
            server.ConnectionClass = _connection_class(*too_large)
        if tls is not None:
            server.ssl_adapter = _ContextAdapter(tls)
        server.error_log = _server_log  # type: ignore[method-assign]
        server.prepare()
        self._server = server

    def url(self, scheme: str = "http") -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.name} server is not started")
        host, port = self._server.bind_addr[:2]
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        assert self._server is not None, "listen first"
        self._thread = threading.Thread(target=self._server.serve,
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(10)
