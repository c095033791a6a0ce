"""Browsing a run database in datasette, bound to 127.0.0.1, with full-text search on turns.

The run database itself is never changed: browsing serves a snapshot (SQLite's online backup,
consistent even while a run is writing) in a temporary folder, with an FTS index on
`turns.text` added to the copy. The snapshot is taken when browsing starts; start again to see
newer turns. The server listens on the loopback interface only, and answers only requests whose
Host header names it (`localhost` or `127.0.0.1`, any port): a web page on another site that
rebinds its DNS name to 127.0.0.1 gets HTTP 400, not the database (private notes included).
The check is a datasette `asgi_wrapper` plugin registered in-process while browsing.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sqlite3
import tempfile
import types
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

import sqlite_utils

from personae.errors import UserError
from personae.store import check_database
from personae.store._schema import readonly_uri

HOST = "127.0.0.1"
#: Host headers the server answers: the loopback names, with or without a port.
_ALLOWED_HOST = re.compile(r"(?:localhost|127\.0\.0\.1)(?::[0-9]{1,5})?")
_PLUGIN_NAME = "personae-loopback-host"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_allowed(host: str | None) -> bool:
    """Whether a request with this Host header may be answered (loopback names only)."""
    return host is not None and _ALLOWED_HOST.fullmatch(host.strip().lower()) is not None


def loopback_only(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app so that HTTP requests with any other Host header get HTTP 400."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or []).get(b"host")
            if not host_allowed(raw.decode("latin-1") if raw is not None else None):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Bad Request: this server only answers to localhost or 127.0.0.1\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


@contextlib.contextmanager
def _host_check_plugin() -> Iterator[None]:
    """Register, while browsing, a datasette plugin whose `asgi_wrapper` is `loopback_only`.

    The plugin is an in-memory module, as datasette's `--plugins-dir` plugins are.
    """
    from datasette import hookimpl
    from datasette.plugins import pm

    if pm.get_plugin(_PLUGIN_NAME) is not None:  # already active (a nested call)
        yield
        return

    def asgi_wrapper(datasette: object) -> Callable[[ASGIApp], ASGIApp]:
        return loopback_only

    plugin = types.ModuleType(_PLUGIN_NAME.replace("-", "_"))
    setattr(plugin, "asgi_wrapper", hookimpl(asgi_wrapper))  # noqa: B010 - a module attribute
    pm.register(plugin, name=_PLUGIN_NAME)
    try:
        yield
    finally:
        pm.unregister(name=_PLUGIN_NAME)


def browse_copy(db: str | Path, folder: str | Path) -> Path:
    """Snapshot `db` into `folder` (same file name) and index `turns.text` for search.

    Returns:
        The snapshot's path; datasette names the database after its stem.
    """
    source = Path(db)
    check_database(source)
    target = Path(folder) / f"{source.stem}.db"
    src = sqlite3.connect(readonly_uri(source), uri=True)
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        src.close()
        dst.close()
    copy = sqlite_utils.Database(target)
    try:
        copy["turns"].enable_fts(["text"], create_triggers=False)  # type: ignore[union-attr]
    finally:
        copy.close()
    return target


def _check_port(port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise UserError(
                f"port {port} on {HOST} is already in use",
                where="--port",
                fix="pass another --port (or --port 0 for any free one)",
            ) from None


def datasette_args(copy: Path, port: int, *, open_browser: bool = False) -> list[str]:
    """The `datasette serve` arguments for a snapshot (host fixed to 127.0.0.1)."""
    args = ["serve", str(copy), "--host", HOST, "--port", str(port)]
    return [*args, "--open"] if open_browser else args


def browse(
    db: str | Path,
    *,
    port: int = 8001,
    open_browser: bool = False,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve a snapshot of `db` with datasette on 127.0.0.1:`port` until interrupted.

    `announce`, if given, receives the address once the database and port are checked (so a
    user error is the only line printed).

    Raises:
        UserError: not a readable personae database, datasette not installed, or the port is
            taken.
    """
    try:
        from datasette.cli import cli
    except ImportError:
        raise UserError(
            "datasette is not installed",
            where="personae browse",
            fix="pip install datasette",
        ) from None
    import click

    check_database(Path(db))
    _check_port(port)
    if announce is not None:
        announce(
            f"serving a snapshot of {db} on http://{HOST}:{port}/{Path(db).stem} "
            "(search utterances in the turns table; Ctrl-C stops)"
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets the
    # snapshot folder be removed on the way out.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="personae-browse-") as folder,
            _host_check_plugin(),
        ):
            copy = browse_copy(db, folder)
            with contextlib.suppress(KeyboardInterrupt, click.exceptions.Abort):
                cli.main(
                    args=datasette_args(copy, port, open_browser=open_browser),
                    prog_name="datasette",
                    standalone_mode=False,
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
