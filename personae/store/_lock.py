"""One run per database at a time: an exclusive lock on `<db>.lock`, next to the database.

`with RunLock(db):` takes an `flock` on the lock file and writes the holder (pid, host, start
time, command) into it; a second run into the same database gets a `UserError` naming the
holder. The kernel drops the lock when its holder's process ends, however it ends (kill -9
included), so a lock file left behind by a dead run is taken over without asking. The lock file
is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from personae.errors import UserError
from personae.store._paths import make_folders


def lock_path(db: Path) -> Path:
    """The lock file of database `db`."""
    return db.with_name(db.name + ".lock")


class RunLock:
    """Exclusive right to write one database, held by one process at a time.

    Args:
        db: The database file. It need not exist yet; missing folders above it are created
            (and removed again on release if they are still empty).
    """

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self.path = lock_path(self.db)
        self._fd: int | None = None
        self._made: list[Path] = []

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise `UserError` saying who holds it."""
        if self._fd is not None:
            return
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                self._remove_folders()
                raise UserError(
                    f"another run is writing to this database ({holder})",
                    where=str(self.db),
                    fix="wait for it to finish (or stop it), then rerun; or pass another --db",
                ) from None
            except OSError as exc:
                os.close(fd)
                self._remove_folders()
                raise UserError(
                    f"cannot lock the database ({exc.strerror})",
                    where=str(self.path),
                    fix="put the database on a local disk",
                ) from exc
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv)[:200],
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError:  # e.g. a full disk: the lock holds all the same, only unnamed
            pass
        self._fd = fd

    def release(self) -> None:
        """Give the lock up and remove the lock file."""
        if self._fd is None:
            return
        # unlink while still holding the lock: a waiter that opened this file sees it is gone
        with contextlib.suppress(FileNotFoundError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_folders()

    def _remove_folders(self) -> None:
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):  # not empty: the database is in it
                folder.rmdir()
        self._made = []

    def _open(self) -> int:
        try:
            if not self._made:
                self._made = make_folders(self.path.parent)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(
                f"cannot create the lock file {self.path.name} ({exc.strerror})",
                where=str(self.db),
                fix="pass a --db path in a writable folder",
            ) from exc


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "holder unknown: it is starting up, or could not record itself"
    text = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started_at')}"
    command = holder.get("command")
    return f"{text}: {command}" if command else text
