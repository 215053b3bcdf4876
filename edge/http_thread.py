"""A WSGI app served by Werkzeug's threaded server in a background thread.

The kiosk page and the recognition API both serve this way: a thread per request is
plenty for a screen, a few phones or a few integrations, and ``stop`` ends it cleanly
for systemd and the tests. Responses leave with TCP_NODELAY: a response's header and
body are separate small writes, and Nagle's algorithm would hold the body until the
client's delayed ACK (about 40 ms on Linux).

May import: nothing of the project.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _NoDelayHandler(WSGIRequestHandler):
    disable_nagle_algorithm = True


class HttpThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def listen(self, host: str, port: int, app: Any, tls: ssl.SSLContext | None = None) -> None:
        """Bind (``OSError`` if the address is taken); nothing is served before ``start``."""
        self._server = make_server(host, port, app, threaded=True, ssl_context=tls,
                                   request_handler=_NoDelayHandler)

    def url(self, scheme: str = "http") -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.name} server is not started")
        host = self._server.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self._server.port}"

    def start(self) -> None:
        assert self._server is not None, "listen first"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
