"""The web environment's apps — notes, social, files, settings — served on 127.0.0.1.

`AppServer` serves all four from one SQLite file on a random free port of 127.0.0.1, in a
thread of this process (a stdlib `ThreadingHTTPServer`): plain server-rendered HTML, forms
posted and answered with a redirect, no JavaScript. `stop` closes the socket and ends the
threads (no request is answered once it returns). Which user is logged in is fixed per
episode (there is no login page).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from personae.environments._apps import files, notes, settings, social
from personae.environments._apps._data import TABLES, AppSetup, connect, dump, seed
from personae.environments._apps._html import Handler, Request, Response, not_found

__all__ = ["TABLES", "AppServer", "AppSetup", "dump", "seed"]

#: The largest form body accepted, in bytes.
MAX_BODY = 1 << 20
ROUTES: tuple[tuple[str, re.Pattern[str], Handler], ...] = tuple(
    (method, re.compile(pattern), handler)
    for app in (notes, social, files, settings)
    for method, pattern, handler in app.ROUTES
)


def handle(method: str, path: str, form: dict[str, str], db: Path, user: str) -> Response:
    """The apps' answer to one request (the database changes committed when it returns)."""
    con = connect(db)
    try:
        with con:
            path = path.rstrip("/") or "/"
            if path == "/":
                return Response(303, location="/notes")
            req = Request(method, path, user, con, form=form)
            for verb, pattern, handler in ROUTES:
                match = pattern.fullmatch(path)
                if match and verb == method:
                    return handler(Request(method, path, user, con, match.groups(), form))
            return not_found(req)
    finally:
        con.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so no handler thread outlives its answer and
    # `stop` can wait for every one of them; the socket timeout bounds a client that stalls
    timeout = 10.0

    def _answer(self, method: str, form: dict[str, str]) -> None:
        path = urlsplit(self.path).path
        res = handle(method, path, form, self.server.db, self.server.user)
        body = res.body.encode()
        self.send_response(res.status)
        if res.location is not None:
            self.send_header("Location", res.location)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer("GET", {})

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            self.send_error(413)
            return
        raw = self.rfile.read(size).decode("utf-8", "replace")
        self._answer("POST", dict(parse_qsl(raw, keep_blank_values=True)))

    def log_message(self, format: str, *args: object) -> None:
        return None  # the environment records actions itself


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    db: Path
    user: str


class AppServer:
    """The apps of one episode, backed by the SQLite file `db`, as `user`.

    Args:
        db: The episode's database (made by `seed`).
        user: Who is logged in.
    """

    poll_s: ClassVar[float] = 0.02

    def __init__(self, db: Path, user: str) -> None:
        self.db = db
        self.user = user
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Listen on a free port of 127.0.0.1 and serve in a thread; return the origin."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.db, server.user = self.db, self.user
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(self.poll_s,),
            name="personae-web-apps",
            daemon=True,
        )
        self._thread.start()
        return self.origin

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT` (only valid once started)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving, wait for the requests being answered, close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
