"""Where a database file may live: checks on the path and the file's header, before SQLite.

The checks only look (stat, access, the first 100 bytes); nothing is created. Each problem is a
`UserError` saying what is wrong with which path and what to do instead. `make_folders` is the
one place that creates folders for a database, and says which, so they can be removed again.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

from personae.errors import UserError

_HEADER = b"SQLite format 3\x00"

#: Kernel file systems, where a database cannot be stored.
_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"))


def folder_is_writable(folder: Path) -> bool:
    """True if files can be created in `folder` (False for read-only mounts, also as root)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: creating through it would go elsewhere
            break
        parent = parent.parent
    return parent


def check_target(path: Path, *, for_writing: bool) -> bool:
    """Check that `path` names a database file that can be read (and written).

    Returns True if the file exists and is not empty (the caller then checks its contents),
    False if there is nothing there yet.

    Raises:
        UserError: a folder, a device, a path under a file or in /proc, a missing file when
            reading, or (when writing) a folder or file that is not writable.
    """
    where = str(path)
    resolved = path.resolve()
    if for_writing and any(resolved.is_relative_to(root) for root in _PSEUDO_ROOTS):
        raise UserError(
            f"cannot store a database in {resolved.parts[1]!r}, a kernel file system",
            where=where,
            fix="pass a --db path on a disk, e.g. logs/run.db",
        )
    if path.is_dir():
        raise UserError(
            "this is a folder, not a database file",
            where=where,
            fix=f"pass a file path, e.g. {path / 'run.db'}",
        )
    if path.exists():
        if not path.is_file():
            raise UserError(
                "not a regular file",
                where=where,
                fix="pass the path of a .db file",
            )
        if for_writing and not (os.access(path, os.W_OK) and folder_is_writable(path.parent)):
            raise UserError(
                "the database is read-only (the file or its folder cannot be written)",
                where=where,
                fix="make both writable, or copy the database to a writable folder and pass "
                "that copy",
            )
        return path.stat().st_size > 0
    if not for_writing:
        raise UserError(
            "database file not found",
            where=where,
            fix="pass the path printed by 'personae run' (default folder: logs/)",
        )
    base = _nearest_existing(path)
    if base.exists() and not base.is_dir():
        raise UserError(
            f"cannot create the database: {base} is a file, not a folder",
            where=where,
            fix="pass a --db path inside a folder",
        )
    if not base.exists() or not folder_is_writable(base):
        raise UserError(
            f"cannot create the database: {base} is not writable",
            where=where,
            fix="pass a --db path in a writable folder",
        )
    return False


def header_problem(path: Path) -> str | None:
    """What is wrong with the SQLite header of `path` ("not sqlite", "truncated"), or None."""
    with path.open("rb") as handle:
        head = handle.read(100)
    if not head.startswith(_HEADER):
        return "not sqlite"
    if len(head) < 100:
        return "truncated"
    (page_size,) = struct.unpack(">H", head[16:18])
    page_size = 65536 if page_size == 1 else page_size
    change, pages = struct.unpack(">II", head[24:32])
    (valid_for,) = struct.unpack(">I", head[92:96])
    # The page count is only meaningful when written by a recent SQLite (valid-for matches),
    # and only while no WAL is in use: a checkpoint in progress writes page 1 before the rest.
    wal = path.with_name(path.name + "-wal")
    in_use = wal.exists() and wal.stat().st_size > 0
    if not in_use and valid_for == change and pages * page_size > path.stat().st_size:
        return "truncated"
    return None


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, outermost first.

    Raises:
        OSError: a folder could not be created (those made before it are removed again).
    """
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    try:
        for f in reversed(missing):
            f.mkdir()
            made.append(f)
    except OSError:
        for f in reversed(made):
            with contextlib.suppress(OSError):
                f.rmdir()
        raise
    return made
