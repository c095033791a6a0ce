"""Browsing a run database in datasette, bound to 127.0.0.1, with full-text search on turns.

The run database itself is never changed: browsing serves a snapshot (SQLite's online backup,
consistent even while a run is writing) in a temporary folder, with an FTS index on
`turns.text` added to the copy. The snapshot is taken when browsing starts; start again to see
newer turns. The server listens on the loopback interface only.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import tempfile
from pathlib import Path
from types import FrameType

import sqlite_utils

from personae.errors import UserError
from personae.store import check_database
from personae.store._schema import readonly_uri

HOST = "127.0.0.1"


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


def browse(db: str | Path, *, port: int = 8001, open_browser: bool = False) -> None:
    """Serve a snapshot of `db` with datasette on 127.0.0.1:`port` until interrupted.

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

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets the
    # snapshot folder be removed on the way out.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with tempfile.TemporaryDirectory(prefix="personae-browse-") as folder:
            copy = browse_copy(db, folder)
            with contextlib.suppress(KeyboardInterrupt, click.exceptions.Abort):
                cli.main(
                    args=datasette_args(copy, port, open_browser=open_browser),
                    prog_name="datasette",
                    standalone_mode=False,
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
