"""Browsing a run database in datasette, bound to 127.0.0.1: episodes, chats, search.

The run database itself is never changed: browsing serves a snapshot (SQLite's online backup,
consistent even while a run is writing) in a temporary folder, which the viewer then prepares
(`personae.export._viewer`: the current schema, an FTS index on `turns.text`, the
`episode_list` table, datasette metadata). The snapshot is taken when browsing starts; start
again to see newer turns. A snapshot needs as much free space as the database, and is checked
for it first. The server listens on the loopback interface only, and answers only requests
whose Host header names it (`localhost` or `127.0.0.1`, any port): a web page on another site
that rebinds its DNS name to 127.0.0.1 gets HTTP 400, not the database (private notes
included). The check and the viewer's pages are one datasette plugin registered in-process
while browsing.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import sqlite3
import tempfile
import types
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

from personae.errors import UserError
from personae.store import check_database
from personae.store._schema import readonly_uri

HOST = "127.0.0.1"
#: Host headers the server answers: the loopback names, with or without a port.
_ALLOWED_HOST = re.compile(r"(?:localhost|127\.0\.0\.1)(?::[0-9]{1,5})?")
_PLUGIN_NAME = "personae-browse"

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
def _browse_plugin(databases: frozenset[str]) -> Iterator[None]:
    """Register, while browsing, one datasette plugin: `asgi_wrapper` is `loopback_only`, and
    the viewer's hooks (routes, cells, menu links) serve `databases`.

    The plugin is an in-memory module, as datasette's `--plugins-dir` plugins are.
    """
    from datasette import hookimpl
    from datasette.plugins import pm

    from personae.export._viewer import hooks

    if pm.get_plugin(_PLUGIN_NAME) is not None:  # already active (a nested call)
        yield
        return

    def asgi_wrapper(datasette: object) -> Callable[[ASGIApp], ASGIApp]:
        return loopback_only

    plugin = types.ModuleType(_PLUGIN_NAME.replace("-", "_"))
    for name, function in {"asgi_wrapper": asgi_wrapper, **hooks(databases)}.items():
        setattr(plugin, name, hookimpl(function))
    pm.register(plugin, name=_PLUGIN_NAME)
    try:
        yield
    finally:
        pm.unregister(name=_PLUGIN_NAME)


def _check_room(source: Path, folder: Path) -> None:
    """A snapshot needs about the database's size (its WAL included) in `folder`."""
    need = sum(p.stat().st_size for p in (source, Path(f"{source}-wal")) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < need + (need >> 4):
        raise UserError(
            f"not enough free space for a snapshot: {need >> 20} MiB needed, {free >> 20} MiB free",
            where=str(folder),
            fix="free some space, or set TMPDIR to a folder with room",
        )


def _metadata_path(copy: Path) -> Path:
    return copy.with_name(f"{copy.stem}.metadata.json")


def browse_copy(db: str | Path, folder: str | Path) -> Path:
    """Snapshot `db` into `folder` (same file name) and prepare it for the viewer.

    The snapshot gets the current schema, a full-text index on `turns.text`, the
    `episode_list` table and, beside it, the datasette metadata `datasette_args` names.

    Returns:
        The snapshot's path; datasette names the database after its stem.

    Raises:
        UserError: not a readable personae database, or too little room in `folder`.
    """
    from personae.export._viewer import prepare_snapshot, viewer_metadata

    source = Path(db)
    check_database(source)
    _check_room(source, Path(folder))
    target = Path(folder) / f"{source.stem}.db"
    src = sqlite3.connect(readonly_uri(source), uri=True)
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        src.close()
        dst.close()
    snapshot = prepare_snapshot(target)
    _metadata_path(target).write_text(json.dumps(viewer_metadata(snapshot)), encoding="utf-8")
    return target


def _choose_port(port: int) -> int:
    """`port` if it is free on 127.0.0.1 (any free port for 0), so the address can be announced."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise UserError(
                f"port {port} on {HOST} is already in use",
                where="--port",
                fix="pass another --port (or --port 0 for any free one)",
            ) from None
        return int(probe.getsockname()[1])


def datasette_args(copy: Path, port: int, *, open_browser: bool = False) -> list[str]:
    """The `datasette serve` arguments for a prepared snapshot (host fixed to 127.0.0.1): the
    viewer's metadata, templates and stylesheet."""
    from personae.export._viewer import STATIC, STATIC_MOUNT, TEMPLATES

    args = ["serve", str(copy), "--host", HOST, "--port", str(port)]
    args += ["--metadata", str(_metadata_path(copy)), "--template-dir", str(TEMPLATES)]
    args += ["--static", f"{STATIC_MOUNT}:{STATIC}"]
    return [*args, "--open"] if open_browser else args


def browse(
    db: str | Path,
    *,
    port: int = 8001,
    open_browser: bool = False,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve a snapshot of `db` with datasette on 127.0.0.1:`port` (0: any free port) until
    interrupted.

    `announce`, if given, receives the address once the database and port are checked (so a
    user error is the only line printed).

    Raises:
        UserError: not a readable personae database, datasette not installed, the port is
            taken, or too little room for the snapshot.
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

    from personae.export._viewer import EPISODE_LIST
    from personae.export._viewer._urls import search_url, table_url

    check_database(Path(db))
    _check_room(Path(db), Path(tempfile.gettempdir()))
    port = _choose_port(port)
    if announce is not None:
        site = f"http://{HOST}:{port}"
        name = Path(db).stem
        announce(
            f"serving a snapshot of {db} on {site}/ — episodes: "
            f"{site}{table_url(name, EPISODE_LIST)}, search: {site}{search_url(name)} "
            "(Ctrl-C stops)"
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets the
    # snapshot folder be removed on the way out.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="personae-browse-") as folder,
            _browse_plugin(frozenset({Path(db).stem})),
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
