"""Snapshots of an environment's world: its files, the commands run, and app state.

`snapshot_files` reads a workspace from the host without ever following a link: every folder
is opened relative to its parent with `O_NOFOLLOW`, so a sandboxed process that swaps a file
or a folder for a symlink to a host path while the snapshot runs makes the snapshot see a
symlink, never the host file. Sizes are bounded: at most `max_entries` entries, text kept only
for small UTF-8 files, hashes for every regular file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FileKind = Literal["file", "dir", "symlink", "other"]

#: Largest file whose text a snapshot keeps (state checks read it).
TEXT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class FileState:
    """One entry of a workspace.

    Attributes:
        kind: `file`, `dir`, `symlink` or `other` (a FIFO or socket).
        mode: Permission bits (`0o644`).
        size: Size in bytes.
        sha256: Hex digest of a regular file's bytes (None for other kinds).
        text: The file's text when it is UTF-8 and at most `TEXT_BYTES` long.
        target: A symlink's target, as written (never followed).
    """

    kind: FileKind
    mode: int
    size: int = 0
    sha256: str | None = None
    text: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class StateDiff:
    """What changed between two snapshots (workspace-relative paths, sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class State:
    """An environment's world at one moment.

    Attributes:
        files: Workspace entries by relative POSIX path (`notes/todo.txt`).
        commands: Every command run so far, in order.
        extra: Environment-specific state (e.g. an app's database rows), JSON-serialisable.
        complete: False when the snapshot stopped at its entry limit.
    """

    files: Mapping[str, FileState] = field(default_factory=dict)
    commands: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    complete: bool = True

    def diff(self, later: State) -> StateDiff:
        """The files added, removed and changed from this snapshot to `later`."""
        before, after = self.files, later.files
        return StateDiff(
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            changed=tuple(sorted(p for p in before.keys() & after.keys() if before[p] != after[p])),
        )


def _read_regular(fd: int, size: int) -> tuple[str, str | None]:
    digest = hashlib.sha256()
    head = bytearray()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
        if len(head) <= TEXT_BYTES:
            head += chunk
    text: str | None = None
    if size <= TEXT_BYTES and len(head) <= TEXT_BYTES:
        try:
            text = bytes(head).decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return digest.hexdigest(), text


def _entry(dir_fd: int, name: str, st: os.stat_result, content: bool) -> FileState:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return FileState("symlink", mode, st.st_size, target=os.readlink(name, dir_fd=dir_fd))
    if stat.S_ISDIR(st.st_mode):
        return FileState("dir", mode)
    if not stat.S_ISREG(st.st_mode):
        return FileState("other", mode)
    if not content:
        return FileState("file", mode, st.st_size)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return FileState("other", mode, st.st_size)  # swapped or unreadable meanwhile
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            return FileState("other", stat.S_IMODE(now.st_mode))
        sha, text = _read_regular(fd, now.st_size)
        return FileState("file", stat.S_IMODE(now.st_mode), now.st_size, sha, text)
    finally:
        os.close(fd)


def _walk(dir_fd: int, prefix: str, content: bool) -> Iterator[tuple[str, FileState]]:
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        return
    for name in names:
        path = f"{prefix}{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        yield path, _entry(dir_fd, name, st, content)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                yield from _walk(sub, f"{path}/", content)
            finally:
                os.close(sub)


def snapshot_files(
    root: Path, *, content: bool = True, max_entries: int = 20_000
) -> tuple[dict[str, FileState], bool]:
    """The entries under `root` (not `root` itself), never following a link.

    Args:
        root: The workspace folder.
        content: Hash regular files and keep small texts (False: kinds, modes, sizes only).
        max_entries: Stop after this many entries.

    Returns:
        The entries by relative POSIX path, and whether the walk saw every entry.
    """
    files: dict[str, FileState] = {}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for path, entry in _walk(fd, "", content):
            if len(files) >= max_entries:
                return files, False
            files[path] = entry
    finally:
        os.close(fd)
    return files, True


def usage(files: Mapping[str, FileState]) -> int:
    """Bytes the regular files of a snapshot hold."""
    return sum(f.size for f in files.values() if f.kind == "file")
